import NetshapeCore
import NetshapeEngine

/// An error the fake kernel throws, carrying an errno like the real one.
public struct FakeKernelError: KernelFailure, Equatable {
    public var errno: Int32?
    public var message: String
    public var description: String { message }
    public init(errno: Int32?, _ message: String) {
        self.errno = errno
        self.message = message
    }
}

/// An in-memory kernel: tc objects per namespace, a net_cls tree, a process table, and the
/// ownership record. It enforces what the real kernel enforces where the engine relies on it
/// (EEXIST on add, ENOENT on change/delete, EBUSY on rmdir of a populated cgroup) and records
/// every operation, so tests can assert exactly what an apply did.
public final class FakeKernel: KernelPort {
    public struct Namespace {
        public var netnsID: String
        public var device: String
        public var ifindex: Int32
        public var qdiscs: [ObservedQdisc] = []
        public var classes: [ObservedClass] = []
        public var filters: [ObservedFilter] = []
        public var processes: [ProcessInfo] = []
        /// The host-side veth peer of `device`, if any (the ingress goes there).
        public var peer: String?
        /// Links inside the namespace other than `device` (IFBs).
        public var links: Set<String> = []
        /// Whether the device has an ingress qdisc.
        public var ingressQdisc = false
        /// Name of the `ip netns` file, for provisioning.
        public var netnsName: String?
        /// Its netns cookie (unique per boot, never reused; 0 where the kernel has none).
        public var cookie: UInt64 = 0
        /// The cgroup v2 classifier's map (cgroup id → classid), alive while its filter is.
        public var cgroup2Map: [UInt64: TCHandle]?
        public var cgroup2ProgramID: UInt32 = 0
    }

    /// The cgroup v2 tree: directory path (normalised) → id. Each new directory gets a new id,
    /// as a re-created cgroup gets a new inode. nil: cgroup2 is not mounted.
    public var cgroup2Dirs: [String: UInt64]? = [:]
    /// The processes in each cgroup v2 directory (`cgroup.procs`), and what the kernel reads of
    /// each (comm, ids, network namespace, net_cls classid) for `status`'s path members.
    public var cgroup2Procs: [String: [Int32]] = [:]
    public var cgroup2Processes: [Int32: ObservedCgroup2Members.Process] = [:]
    private var nextCgroup2ID: UInt64 = 1000
    private var nextProgramID: UInt32 = 1

    /// `mkdir` in the cgroup v2 tree (parents too); returns the directory's id.
    @discardableResult
    public func makeCgroup2(_ path: String) -> UInt64 {
        let parts = path.split(separator: "/")
        var id: UInt64 = 0
        for n in 1...max(parts.count, 1) {
            let p = parts.prefix(n).joined(separator: "/")
            if let have = cgroup2Dirs?[p] {
                id = have
            } else {
                nextCgroup2ID += 1
                id = nextCgroup2ID
                cgroup2Dirs?[p] = id
            }
        }
        return id
    }

    /// `rmdir` in the cgroup v2 tree (and everything below).
    public func removeCgroup2(_ path: String) {
        cgroup2Dirs = cgroup2Dirs?.filter { $0.key != path && !$0.key.hasPrefix(path + "/") }
    }

    /// The sock_create program: attached on the cgroup2 root or not, and its map (which goes with
    /// the attachment, as the kernel frees a program and its map with their last reference).
    public var sockCreateAttached = false
    public var sockCreateMap: [SockKey: SockVerdict] = [:]
    private var nextCookie: UInt64 = 4096

    /// tc objects on a host device (veth peers), by device name.
    public var hostDevices: [String: (qdiscs: [ObservedQdisc], classes: [ObservedClass])] = [:]
    /// Other host links (bridges).
    public var hostLinks: Set<String> = []

    public var caps: KernelCapabilities
    /// Keyed by the policy namespace name (the fake resolves targets by name).
    public var namespaces: [String: Namespace] = [:]
    public var cgroups: [String: ObservedCgroup] = [:]
    public var ownership = OwnershipRecord()
    public var users: [String: UInt32] = [:]
    public var groups: [String: UInt32] = [:]
    /// Every operation executed, in order (including rollbacks).
    public private(set) var log: [Operation] = []
    /// Fails the operation for which this returns an error (checked before it takes effect).
    public var failWhen: ((Operation) -> FakeKernelError?)?
    /// Runs after each operation took effect and was acknowledged (to undo it behind the engine's back).
    public var afterEach: ((Operation) -> Void)?
    /// Every observation asked for, in order.
    public private(set) var requests: [ObservationRequest] = []
    private var nextAutoHandle: UInt16 = 0x8001

    public init(capabilities: KernelCapabilities = .minimal) { self.caps = capabilities }

    /// Adds a namespace with a device whose root qdisc is the kernel default (`noqueue`).
    public func addNamespace(
        _ name: String, device: String = "eth0", processes: [ProcessInfo] = [], peer: String? = nil
    ) {
        var ns = Namespace(
            netnsID: "4:\(4_026_531_000 + namespaces.count)", device: device,
            ifindex: Int32(2 + namespaces.count))
        ns.qdiscs = [ObservedQdisc(handle: .unspecified, parent: .root, kind: "noqueue")]
        ns.processes = processes
        ns.peer = peer
        ns.cookie = newCookie()
        if let p = peer { hostDevices[p] = ([ObservedQdisc(handle: .unspecified, parent: .root, kind: "noqueue")], []) }
        namespaces[name] = ns
    }

    public func capabilities() throws -> KernelCapabilities { caps }

    func newCookie() -> UInt64 {
        nextCookie += 1
        return caps.sockCreate ? nextCookie : 0
    }

    /// What the sock_create program decides for a socket created in `namespace` by a task with
    /// `comm`, `uid`, `gid` (nil: nothing attached, or no rule hit; `.unspecified`: defer).
    public func sockCreateVerdict(namespace: String, comm: String, uid: UInt32 = 0, gid: UInt32 = 0) -> TCHandle? {
        guard sockCreateAttached, let cookie = namespaces[namespace]?.cookie, cookie != 0 else { return nil }
        var table: [SockRule: SockVerdict] = [:]
        for (k, v) in sockCreateMap where k.cookie == cookie { table[k.rule] = v }
        return SockCreate.evaluate(table, comm: comm, uid: uid, gid: gid)
    }

    public func observe(_ request: ObservationRequest) throws -> ObservedState {
        requests.append(request)
        var seenCgroups = cgroups
        for path in cgroups.keys {
            guard let slash = path.lastIndex(of: "/") else { continue }
            seenCgroups[String(path[..<slash])]?.children.append(String(path[path.index(after: slash)...]))
        }
        // As the real kernel reads them: only the paths asked for, without the members not asked for.
        if let only = request.cgroupPaths { seenCgroups = seenCgroups.filter { only.contains($0.key) } }
        for path in request.cgroupsWithoutMembers { seenCgroups[path]?.pids = [] }
        var state = ObservedState(cgroups: request.cgroups ? seenCgroups : [:], ownership: ownership)
        if caps.sockCreate {
            state.sockCreate = ObservedSockCreate(attached: sockCreateAttached, entries: sockCreateMap)
        }
        if let dirs = cgroup2Dirs {
            state.cgroup2Mount = "/sys/fs/cgroup"
            for p in request.cgroup2Paths {
                if let id = p.isEmpty ? 1 : dirs[p] {
                    state.cgroup2[p] = Cgroup2ID(id: id, level: p.split(separator: "/").count)
                }
            }
            if request.cgroup2Members {
                // As the real walk: every directory at or below a rule path, with its processes.
                var walked = ObservedCgroup2Members()
                for (p, id) in dirs where request.cgroup2Paths.contains(where: { cgroupPrefix($0, matches: p) }) {
                    walked.directories[p] = .init(id: id, pids: cgroup2Procs[p] ?? [])
                    for pid in cgroup2Procs[p] ?? [] { walked.processes[pid] = cgroup2Processes[pid] }
                }
                state.cgroup2Members = walked
            }
        }
        for r in request.namespaces {
            if let p = r.provision {
                state.provision[r.name] = ObservedProvision(
                    netnsExists: namespaces[r.name] != nil, hostDeviceExists: hostDevices[p.hostDevice] != nil,
                    bridgeExists: p.bridge.map(hostLinks.contains) ?? false)
            }
            guard let ns = namespaces[r.name] else {
                state.namespaces[r.name] = ObservedNamespace(
                    name: r.name, problem: "network namespace \(r.target) does not exist")
                continue
            }
            if let d = r.device, d != ns.device {
                state.namespaces[r.name] = ObservedNamespace(
                    name: r.name, problem: "device \(d) does not exist in \(r.target)")
                continue
            }
            var procs = ns.processes
            for i in procs.indices {
                procs[i].netCls = cgroups.values.first { $0.pids.contains(procs[i].pid) }?.path ?? ""
            }
            var ingress: ObservedIngress?
            if r.ingress {
                if let p = ns.peer, let dev = hostDevices[p] {
                    ingress = ObservedIngress(
                        placement: .peer, device: p, netnsID: "4:host", ifindex: 100, qdiscs: dev.qdiscs,
                        classes: dev.classes)
                } else {
                    let exists = ns.links.contains(r.ifbName)
                    let dev = hostDevices["\(r.name)/\(r.ifbName)"]
                    ingress = ObservedIngress(
                        placement: .ifb, device: r.ifbName, netnsID: ns.netnsID, ifindex: exists ? 200 : 0,
                        qdiscs: dev?.qdiscs ?? [], classes: dev?.classes ?? [],
                        ingressQdisc: ns.ingressQdisc
                            ? ObservedQdisc(handle: TCHandle(raw: 0xFFFF_0000), parent: .ingress, kind: "ingress") : nil
                    )
                }
            }
            if r.classesOnly {
                state.namespaces[r.name] = ObservedNamespace(
                    name: r.name, netnsID: ns.netnsID, device: ns.device, ifindex: ns.ifindex,
                    classes: ns.classes.filter { r.onlyClasses?.contains($0.spec.classid) ?? true })
                continue
            }
            state.namespaces[r.name] = ObservedNamespace(
                name: r.name, netnsID: ns.netnsID, device: ns.device, ifindex: ns.ifindex, qdiscs: ns.qdiscs,
                classes: ns.classes, filters: ns.filters, processes: request.processes ? procs : [], ingress: ingress)
            state.namespaces[r.name]?.netnsCookie = ns.cookie
            state.namespaces[r.name]?.cgroup2Map = ns.cgroup2Map.map {
                ObservedCgroup2Map(
                    programID: ns.cgroup2ProgramID, mapID: ns.cgroup2ProgramID + 1,
                    name: Cgroup2Entry.objectName(namespace: r.name), entries: $0)
            }
        }
        for u in request.users { if let id = users[u] { state.users[u] = id } }
        for g in request.groups { if let id = groups[g] { state.groups[g] = id } }
        return state
    }

    public func loadOwnership() throws -> OwnershipRecord { ownership }
    public func saveOwnership(_ record: OwnershipRecord) throws { ownership = record }

    public func execute(_ op: Operation) throws {
        if let e = failWhen?(op) { throw e }
        try apply(op)
        log.append(op)
        afterEach?(op)
    }

    /// When set, `execute(_: [Operation])` behaves as the real kernel port's netlink batches: up
    /// to this many operations at once, each with its own result, the ones after a failure in the
    /// same batch carried out all the same; nothing after a batch with a failure. 0: a broken
    /// port that answers nothing.
    public var batchSize: Int?

    public func execute(_ ops: [Operation]) -> [Result<Void, any Error>] {
        // Unset: one at a time, stopping at the first failure (the port's default).
        guard let size = batchSize else { return oneAtATime(ops, execute) }
        if size == 0 { return [] }
        var results: [Result<Void, any Error>] = []
        for start in stride(from: 0, to: ops.count, by: size) {
            for op in ops[start..<min(start + size, ops.count)] {
                results.append(Result { try execute(op) })
            }
            if results.contains(where: \.isFailure) { break }
        }
        return results
    }

    func fail(_ errno: Int32, _ msg: String) -> FakeKernelError { FakeKernelError(errno: errno, msg) }

    private func apply(_ op: Operation) throws {
        switch op.action {
        case .moveProcess(let pid, _, _, let to):
            guard namespaces.values.contains(where: { $0.processes.contains { $0.pid == pid } }) else {
                throw fail(KernelErrno.ESRCH, "no such process \(pid)")
            }
            for k in Array(cgroups.keys) { cgroups[k]?.pids.removeAll { $0 == pid } }
            if !to.isEmpty {
                guard cgroups[to] != nil else { throw fail(KernelErrno.ENOENT, "no cgroup \(to)") }
                cgroups[to]?.pids.append(pid)
            }
            return
        case .createCgroup(let path, let id):
            guard cgroups[path] == nil else { throw fail(KernelErrno.EEXIST, "cgroup \(path) exists") }
            cgroups[path] = ObservedCgroup(path: path, classid: id)
            return
        case .setClassID(let path, let id, _):
            guard cgroups[path] != nil else { throw fail(KernelErrno.ENOENT, "no cgroup \(path)") }
            cgroups[path]?.classid = id
            return
        case .removeCgroup(let path, _):
            guard let cg = cgroups[path] else { throw fail(KernelErrno.ENOENT, "no cgroup \(path)") }
            guard cg.pids.isEmpty, !cgroups.keys.contains(where: { $0.hasPrefix(path + "/") }) else {
                throw fail(16, "cgroup \(path) is busy")
            }
            cgroups[path] = nil
            return
        case .createNetns(let n):
            guard namespaces[op.namespace] == nil else { throw fail(KernelErrno.EEXIST, "netns \(n) exists") }
            var ns = Namespace(netnsID: "4:\(5_000_000 + namespaces.count)", device: "", ifindex: 0)
            ns.netnsName = n
            ns.cookie = newCookie()
            namespaces[op.namespace] = ns
            return
        case .deleteNetns:
            guard let ns = namespaces.removeValue(forKey: op.namespace) else {
                throw fail(KernelErrno.ENOENT, "no netns")
            }
            if let p = ns.peer { hostDevices[p] = nil }
            return
        case .createVeth(let host, let peer, _):
            guard hostDevices[host] == nil else { throw fail(KernelErrno.EEXIST, "\(host) exists") }
            namespaces[op.namespace]?.device = peer
            namespaces[op.namespace]?.ifindex = 2
            namespaces[op.namespace]?.peer = host
            namespaces[op.namespace]?.qdiscs = [ObservedQdisc(handle: .unspecified, parent: .root, kind: "noqueue")]
            hostDevices[host] = ([ObservedQdisc(handle: .unspecified, parent: .root, kind: "noqueue")], [])
            return
        case .deleteVeth(let host):
            hostDevices[host] = nil
            return
        case .createBridge(let b):
            guard hostLinks.insert(b).inserted else { throw fail(KernelErrno.EEXIST, "\(b) exists") }
            return
        case .deleteBridge(let b):
            guard hostLinks.remove(b) != nil else { throw fail(KernelErrno.ENOENT, "no \(b)") }
            return
        case .attachToBridge, .detachFromBridge, .addAddress, .deleteAddress, .linkUp, .linkDown, .addDefaultRoute,
            .deleteDefaultRoute:
            return
        case .attachSockCreate:
            guard caps.sockCreate else { throw fail(KernelErrno.EINVAL, "no sock_create hook") }
            guard !sockCreateAttached else { throw fail(KernelErrno.EEXIST, "sock_create program attached") }
            sockCreateAttached = true
            sockCreateMap = [:]
            return
        case .detachSockCreate:
            guard sockCreateAttached else { throw fail(KernelErrno.ENOENT, "no sock_create program") }
            sockCreateAttached = false
            sockCreateMap = [:]
            return
        case .putSockRule(let k, let v, _):
            guard sockCreateAttached else { throw fail(KernelErrno.ENOENT, "no sock_create map") }
            guard sockCreateMap[k] != nil || sockCreateMap.count < SockCreate.maxEntries else {
                throw fail(7, "sock_create map full (E2BIG)")
            }
            sockCreateMap[k] = v
            return
        case .deleteSockRule(let k, _):
            guard sockCreateAttached, sockCreateMap.removeValue(forKey: k) != nil else {
                throw fail(KernelErrno.ENOENT, "no sock_create rule \(k)")
            }
            return
        default: break
        }
        if op.link == .ingress {
            try applyIngress(op)
            return
        }
        guard var ns = namespaces[op.namespace] else { throw fail(KernelErrno.ENOENT, "no namespace \(op.namespace)") }
        defer { namespaces[op.namespace] = ns }
        switch op.action {
        case .createIFB(let n):
            guard ns.links.insert(n).inserted else { throw fail(KernelErrno.EEXIST, "\(n) exists") }
            hostDevices["\(op.namespace)/\(n)"] = (
                [ObservedQdisc(handle: .unspecified, parent: .root, kind: "noqueue")], []
            )
        case .deleteIFB(let n):
            guard ns.links.remove(n) != nil else { throw fail(KernelErrno.ENOENT, "no \(n)") }
            hostDevices["\(op.namespace)/\(n)"] = nil
        case .addIngressRedirect:
            guard !ns.ingressQdisc else { throw fail(KernelErrno.EEXIST, "ingress qdisc exists") }
            ns.ingressQdisc = true
        case .deleteIngressRedirect:
            ns.ingressQdisc = false
        case .addRootQdisc(let q):
            if ns.qdiscs.contains(where: { $0.parent == .root && $0.handle != .unspecified }) {
                throw fail(KernelErrno.EEXIST, "root qdisc exists")
            }
            ns.qdiscs = [ObservedQdisc(handle: q.handle, parent: .root, kind: "htb", htbDefault: q.defaultMinor)]
            ns.classes = []
            ns.filters = []
            ns.cgroup2Map = nil
        case .replaceRootQdisc(let q, _):
            ns.qdiscs = [ObservedQdisc(handle: q.handle, parent: .root, kind: "htb", htbDefault: q.defaultMinor)]
            ns.classes = []
            ns.filters = []
            ns.cgroup2Map = nil
        case .deleteRootQdisc(let q):
            guard ns.qdiscs.contains(where: { $0.parent == .root && $0.handle == q.handle }) else {
                throw fail(KernelErrno.ENOENT, "no root qdisc \(q.handle)")
            }
            ns.qdiscs = [ObservedQdisc(handle: .unspecified, parent: .root, kind: "noqueue")]
            ns.classes = []
            ns.filters = []
            ns.cgroup2Map = nil
        case .addClass(let c):
            try Self.addClass(c, classes: &ns.classes, qdiscs: &ns.qdiscs)
        case .changeClass(let c, _):
            try Self.changeClass(c, classes: &ns.classes)
        case .deleteClass(let c):
            try Self.deleteClass(c, classes: &ns.classes, qdiscs: &ns.qdiscs)
        case .addLeaf(let l):
            guard !ns.qdiscs.contains(where: { $0.parent == l.parent }) else {
                throw fail(KernelErrno.EEXIST, "qdisc at \(l.parent) exists")
            }
            guard !ns.classes.contains(where: { $0.spec.parent == l.parent }) else {
                throw fail(KernelErrno.EINVAL, "class \(l.parent) is an inner class")
            }
            ns.qdiscs.append(
                ObservedQdisc(
                    handle: TCHandle(major: nextAutoHandle, minor: 0), parent: l.parent,
                    kind: l.queue.kind, queue: l.queue))
            nextAutoHandle += 1
        case .replaceLeaf(let l, _):
            ns.qdiscs.removeAll { $0.parent == l.parent }
            ns.qdiscs.append(
                ObservedQdisc(
                    handle: TCHandle(major: nextAutoHandle, minor: 0), parent: l.parent,
                    kind: l.queue.kind, queue: l.queue))
            nextAutoHandle += 1
        case .deleteLeaf(let l):
            guard ns.qdiscs.contains(where: { $0.parent == l.parent }) else {
                throw fail(KernelErrno.ENOENT, "no qdisc at \(l.parent)")
            }
            ns.qdiscs.removeAll { $0.parent == l.parent }
        case .addFilter(let f):
            guard
                !ns.filters.contains(where: {
                    $0.parent == f.parent && $0.priority == f.priority && $0.handle == f.handle
                })
            else {
                throw fail(KernelErrno.EEXIST, "filter exists")
            }
            guard ns.qdiscs.contains(where: { $0.parent == .root && $0.handle == f.parent }) else {
                throw fail(KernelErrno.EINVAL, "no qdisc \(f.parent) to attach a filter to")
            }
            ns.filters.append(
                ObservedFilter(
                    parent: f.parent, kind: f.kind.kind, priority: f.priority, handle: f.handle,
                    bpfName: f.kind.filterName, bpfProgramID: f.kind == .cgroup ? nil : nextProgramID))
            if f.kind == .cgroup2 {
                // A fresh map with the program: what the real kernel layer loads with each filter.
                ns.cgroup2Map = [:]
                ns.cgroup2ProgramID = nextProgramID
            }
            nextProgramID += 2
        case .deleteFilter(let f):
            let gone = ns.filters.filter { $0.parent == f.parent && $0.priority == f.priority && $0.handle == f.handle }
            if gone.contains(where: { $0.bpfName == FilterSpec.cgroup2ProgramName }) { ns.cgroup2Map = nil }
            ns.filters.removeAll { $0.parent == f.parent && $0.priority == f.priority && $0.handle == f.handle }
        case .mapCgroup(let e, _):
            guard ns.cgroup2Map != nil else { throw fail(KernelErrno.ENOENT, "no cgroup2 classifier map") }
            ns.cgroup2Map?[e.id] = e.classid
        case .unmapCgroup(let e):
            guard ns.cgroup2Map?[e.id] != nil else { throw fail(KernelErrno.ENOENT, "no map entry \(e.id)") }
            ns.cgroup2Map?[e.id] = nil
        default: break
        }
    }

    /// tc on the device carrying a namespace's ingress: its host-side peer or its IFB.
    private func applyIngress(_ op: Operation) throws {
        let key = hostDevices[op.device] != nil ? op.device : "\(op.namespace)/\(op.device)"
        guard var dev = hostDevices[key] else { throw fail(KernelErrno.ENOENT, "no device \(op.device)") }
        defer { hostDevices[key] = dev }
        switch op.action {
        case .addRootQdisc(let q), .replaceRootQdisc(let q, _):
            if case .addRootQdisc = op.action,
                dev.qdiscs.contains(where: { $0.parent == .root && $0.handle != .unspecified })
            {
                throw fail(KernelErrno.EEXIST, "root qdisc exists")
            }
            dev.qdiscs = [ObservedQdisc(handle: q.handle, parent: .root, kind: "htb", htbDefault: q.defaultMinor)]
            dev.classes = []
        case .deleteRootQdisc:
            dev.qdiscs = [ObservedQdisc(handle: .unspecified, parent: .root, kind: "noqueue")]
            dev.classes = []
        case .addClass(let c): try Self.addClass(c, classes: &dev.classes, qdiscs: &dev.qdiscs)
        case .changeClass(let c, _): try Self.changeClass(c, classes: &dev.classes)
        case .deleteClass(let c): try Self.deleteClass(c, classes: &dev.classes, qdiscs: &dev.qdiscs)
        case .addLeaf(let l), .replaceLeaf(let l, _):
            dev.qdiscs.removeAll { $0.parent == l.parent }
            dev.qdiscs.append(
                ObservedQdisc(
                    handle: TCHandle(major: nextAutoHandle, minor: 0), parent: l.parent, kind: l.queue.kind,
                    queue: l.queue))
            nextAutoHandle += 1
        case .deleteLeaf(let l): dev.qdiscs.removeAll { $0.parent == l.parent }
        default: throw fail(KernelErrno.EINVAL, "not an ingress tc operation")
        }
    }

    // HTB classes as sch_htb.c keeps them.

    /// `htb_change_class` creating a class: a child turns its parent into an inner class, which
    /// loses its leaf queue (`htb_parent_to_leaf`'s reverse: the parent's qdisc is destroyed).
    static func addClass(_ c: HTBClassSpec, classes: inout [ObservedClass], qdiscs: inout [ObservedQdisc]) throws {
        guard !classes.contains(where: { $0.spec.classid == c.classid }) else {
            throw FakeKernelError(errno: KernelErrno.EEXIST, "class \(c.classid) exists")
        }
        if c.parent.minor != 0 {
            guard classes.contains(where: { $0.spec.classid == c.parent }) else {
                throw FakeKernelError(errno: KernelErrno.ENOENT, "no parent class \(c.parent)")
            }
            qdiscs.removeAll { $0.parent == c.parent }
        }
        classes.append(ObservedClass(spec: c))
    }

    /// `htb_change_class` on an existing class: `prio` and `quantum` are taken only while the class
    /// is a leaf (`if (!cl->level)`); an inner class keeps the values it had as a leaf. Counters stay.
    static func changeClass(_ c: HTBClassSpec, classes: inout [ObservedClass]) throws {
        guard let i = classes.firstIndex(where: { $0.spec.classid == c.classid }) else {
            throw FakeKernelError(errno: KernelErrno.ENOENT, "no class \(c.classid)")
        }
        var new = c
        if classes.contains(where: { $0.spec.parent == c.classid }) {
            new.priority = classes[i].spec.priority
            new.quantum = classes[i].spec.quantum
        }
        classes[i].spec = new
    }

    /// `htb_delete`: a class with children is busy.
    static func deleteClass(_ c: HTBClassSpec, classes: inout [ObservedClass], qdiscs: inout [ObservedQdisc]) throws {
        guard classes.contains(where: { $0.spec.classid == c.classid }) else {
            throw FakeKernelError(errno: KernelErrno.ENOENT, "no class \(c.classid)")
        }
        guard !classes.contains(where: { $0.spec.parent == c.classid }) else {
            throw FakeKernelError(errno: 16, "class \(c.classid) has child classes (EBUSY)")
        }
        classes.removeAll { $0.spec.classid == c.classid }
        qdiscs.removeAll { $0.parent == c.classid }
    }

    /// Adds traffic to a class's counters (for status tests).
    public func count(namespace: String, classid: TCHandle, bytes: UInt64, packets: UInt64) {
        guard let i = namespaces[namespace]?.classes.firstIndex(where: { $0.spec.classid == classid }) else { return }
        namespaces[namespace]?.classes[i].stats.bytes += bytes
        namespaces[namespace]?.classes[i].stats.packets += packets
    }

    /// Forgets the operation log.
    public func clearLog() {
        log = []
        requests = []
    }
}
