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
    }

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
    private var nextAutoHandle: UInt16 = 0x8001

    public init(capabilities: KernelCapabilities = .minimal) { self.caps = capabilities }

    /// Adds a namespace with a device whose root qdisc is the kernel default (`noqueue`).
    public func addNamespace(_ name: String, device: String = "eth0", processes: [ProcessInfo] = []) {
        var ns = Namespace(netnsID: "4:\(4_026_531_000 + namespaces.count)", device: device,
                           ifindex: Int32(2 + namespaces.count))
        ns.qdiscs = [ObservedQdisc(handle: .unspecified, parent: .root, kind: "noqueue")]
        ns.processes = processes
        namespaces[name] = ns
    }

    public func capabilities() throws -> KernelCapabilities { caps }

    public func observe(_ request: ObservationRequest) throws -> ObservedState {
        var state = ObservedState(cgroups: cgroups, ownership: ownership)
        for r in request.namespaces {
            guard let ns = namespaces[r.name] else {
                state.namespaces[r.name] = ObservedNamespace(name: r.name, problem: "network namespace \(r.target) does not exist")
                continue
            }
            if let d = r.device, d != ns.device {
                state.namespaces[r.name] = ObservedNamespace(name: r.name, problem: "device \(d) does not exist in \(r.target)")
                continue
            }
            var procs = ns.processes
            for i in procs.indices {
                procs[i].netCls = cgroups.values.first { $0.pids.contains(procs[i].pid) }?.path ?? ""
            }
            state.namespaces[r.name] = ObservedNamespace(
                name: r.name, netnsID: ns.netnsID, device: ns.device, ifindex: ns.ifindex, qdiscs: ns.qdiscs,
                classes: ns.classes, filters: ns.filters, processes: request.processes ? procs : [])
        }
        for u in request.users { if let id = users[u] { state.users[u] = id } }
        for g in request.groups { if let id = groups[g] { state.groups[g] = id } }
        return state
    }

    public func saveOwnership(_ record: OwnershipRecord) throws { ownership = record }

    public func execute(_ op: Operation) throws {
        if let e = failWhen?(op) { throw e }
        try apply(op)
        log.append(op)
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
        default: break
        }
        guard var ns = namespaces[op.namespace] else { throw fail(KernelErrno.ENOENT, "no namespace \(op.namespace)") }
        defer { namespaces[op.namespace] = ns }
        switch op.action {
        case .addRootQdisc(let q):
            if ns.qdiscs.contains(where: { $0.parent == .root && $0.handle != .unspecified }) {
                throw fail(KernelErrno.EEXIST, "root qdisc exists")
            }
            ns.qdiscs = [ObservedQdisc(handle: q.handle, parent: .root, kind: "htb", htbDefault: q.defaultMinor)]
            ns.classes = []
            ns.filters = []
        case .replaceRootQdisc(let q, _):
            ns.qdiscs = [ObservedQdisc(handle: q.handle, parent: .root, kind: "htb", htbDefault: q.defaultMinor)]
            ns.classes = []
            ns.filters = []
        case .deleteRootQdisc(let q):
            guard ns.qdiscs.contains(where: { $0.parent == .root && $0.handle == q.handle }) else {
                throw fail(KernelErrno.ENOENT, "no root qdisc \(q.handle)")
            }
            ns.qdiscs = [ObservedQdisc(handle: .unspecified, parent: .root, kind: "noqueue")]
            ns.classes = []
            ns.filters = []
        case .addClass(let c):
            guard !ns.classes.contains(where: { $0.spec.classid == c.classid }) else {
                throw fail(KernelErrno.EEXIST, "class \(c.classid) exists")
            }
            ns.classes.append(ObservedClass(spec: c))
        case .changeClass(let c, _):
            guard let i = ns.classes.firstIndex(where: { $0.spec.classid == c.classid }) else {
                throw fail(KernelErrno.ENOENT, "no class \(c.classid)")
            }
            ns.classes[i].spec = c
        case .deleteClass(let c):
            guard ns.classes.contains(where: { $0.spec.classid == c.classid }) else {
                throw fail(KernelErrno.ENOENT, "no class \(c.classid)")
            }
            ns.classes.removeAll { $0.spec.classid == c.classid }
            ns.qdiscs.removeAll { $0.parent == c.classid }
        case .addLeaf(let l):
            guard !ns.qdiscs.contains(where: { $0.parent == l.parent }) else {
                throw fail(KernelErrno.EEXIST, "qdisc at \(l.parent) exists")
            }
            ns.qdiscs.append(ObservedQdisc(handle: TCHandle(major: nextAutoHandle, minor: 0), parent: l.parent,
                                           kind: l.queue.kind, queue: l.queue))
            nextAutoHandle += 1
        case .replaceLeaf(let l, _):
            ns.qdiscs.removeAll { $0.parent == l.parent }
            ns.qdiscs.append(ObservedQdisc(handle: TCHandle(major: nextAutoHandle, minor: 0), parent: l.parent,
                                           kind: l.queue.kind, queue: l.queue))
            nextAutoHandle += 1
        case .deleteLeaf(let l):
            guard ns.qdiscs.contains(where: { $0.parent == l.parent }) else {
                throw fail(KernelErrno.ENOENT, "no qdisc at \(l.parent)")
            }
            ns.qdiscs.removeAll { $0.parent == l.parent }
        case .addFilter(let f):
            guard !ns.filters.contains(where: { $0.parent == f.parent && $0.priority == f.priority && $0.handle == f.handle }) else {
                throw fail(KernelErrno.EEXIST, "filter exists")
            }
            ns.filters.append(ObservedFilter(parent: f.parent, kind: f.kind.kind, priority: f.priority, handle: f.handle,
                                             bpfName: f.kind == .bpf ? FilterSpec.bpfProgramName : nil))
        case .deleteFilter(let f):
            ns.filters.removeAll { $0.parent == f.parent && $0.priority == f.priority && $0.handle == f.handle }
        default: break
        }
    }

    /// Adds traffic to a class's counters (for status tests).
    public func count(namespace: String, classid: TCHandle, bytes: UInt64, packets: UInt64) {
        guard let i = namespaces[namespace]?.classes.firstIndex(where: { $0.spec.classid == classid }) else { return }
        namespaces[namespace]?.classes[i].stats.bytes += bytes
        namespaces[namespace]?.classes[i].stats.packets += packets
    }

    /// Forgets the operation log.
    public func clearLog() { log = [] }
}
