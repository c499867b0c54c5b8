import Glibc
import NetshapeCore

/// The sock_create program on this machine: one attachment on the cgroup2 root for the whole host
/// (every task is in some descendant of it, whatever its network namespace; the map's netns cookie
/// scopes each rule to its namespace), attached with `BPF_F_ALLOW_MULTI` so that programs others
/// attach there or below (systemd's) keep running beside it.
///
/// Nothing is pinned: the attachment holds the program and the program holds its map, so a later
/// netshape run finds both through `BPF_PROG_QUERY` on the root (a program named `netshape_sock`) and
/// the program's map id, and `detach` frees them. No bpffs mount is needed.
enum SockCreateHook {
    static let attachType = BPF.AttachType.cgroupInetSockCreate
    /// `SO_NETNS_COOKIE` (asm-generic/socket.h; Linux 5.14).
    static let soNetnsCookie: Int32 = 71

    /// The cgroup2 root this program attaches to, open (`O_DIRECTORY`).
    final class Root {
        let path: String
        let fd: Int32
        init() throws {
            guard let path = Cgroup2Mount.find() else {
                throw KernelError(
                    .notFound, "find the cgroup2 mount", errno: ENOENT,
                    // The probe found it, so where it is missing now is almost always a mount
                    // namespace of its own: ip netns exec's.
                    reason: "cgroup2 is not mounted in this mount namespace (/proc/self/mountinfo has no cgroup2 "
                        + "root; `ip netns exec` mounts a fresh /sys that hides it: netshape enters network "
                        + "namespaces itself, run it without ip netns exec)")
            }
            self.path = path
            fd = try sys("open(\(path), O_DIRECTORY)") { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        }
        deinit { close(fd) }
    }

    /// Runs `body` holding a flock on the cgroup2 root itself, the one object every netshape on the
    /// host shares whatever its state directory, so attach and detach decide on what is there now.
    static func exclusively(_ root: Root, _ body: () throws -> Void) throws {
        try sys("flock(\(root.path), LOCK_EX)") { flock(root.fd, LOCK_EX) }
        defer { _ = flock(root.fd, LOCK_UN) }
        try body()
    }

    /// The attached program and its map, if netshape's program is attached on `root`.
    static func find(_ root: Root) throws -> (program: BPF.Program, map: BPF.Map)? {
        for id in try BPF.query(target: root.fd, label: root.path, attachType).programIDs {
            guard let program = try? BPF.Program.open(id: id), let info = try? program.info(),
                info.type == .cgroupSock, info.name == SockCreate.programName, let mapID = info.mapIDs.first
            else { continue }
            return (program, try BPF.Map.open(id: mapID))
        }
        return nil
    }

    /// A new map and the program using it, loaded (not attached).
    static func load() throws -> (program: BPF.Program, map: BPF.Map) {
        let map = try BPF.Map.create(
            .hash, keySize: Int(SockCreateProgram.keySize), valueSize: Int(SockCreateProgram.valueSize),
            maxEntries: SockCreate.maxEntries, name: SockCreate.mapName)
        let program = try BPF.Program.load(
            .cgroupSock, expectedAttach: attachType, name: SockCreate.programName,
            SockCreateProgram.instructions(mapFD: map.fd))
        return (program, map)
    }

    static func attach(_ root: Root) throws -> BPF.Map {
        let (program, map) = try load()
        try program.attach(to: root.fd, targetLabel: root.path, attachType, flags: .allowMulti)
        return map
    }

    static func detach(_ root: Root) throws {
        guard let (program, _) = try find(root) else {
            throw KernelError(
                .notFound, "bpf(BPF_PROG_DETACH, \(SockCreate.programName) from \(root.path))", errno: ENOENT,
                reason: "netshape's sock_create program is not attached there")
        }
        try program.detach(from: root.fd, targetLabel: root.path, attachType)
    }

    static func entries(_ map: BPF.Map) throws -> [SockKey: SockVerdict] {
        var out: [SockKey: SockVerdict] = [:]
        for (k, v) in try map.entries() {
            guard let key = SockCreateProgram.key(from: k), let verdict = SockCreateProgram.verdict(from: v) else {
                continue
            }
            out[key] = verdict
        }
        return out
    }

    /// The netns cookie of the namespace the calling thread is in: `getsockopt(SO_NETNS_COOKIE)` on a
    /// throwaway socket created here.
    static func currentCookie(label: String) throws -> UInt64 {
        let fd = try sys("socket(AF_INET, SOCK_DGRAM) in \(label)") {
            socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        defer { close(fd) }
        var cookie: UInt64 = 0
        var len = socklen_t(MemoryLayout<UInt64>.size)
        try sys("getsockopt(SO_NETNS_COOKIE) in \(label)") { getsockopt(fd, SOL_SOCKET, soNetnsCookie, &cookie, &len) }
        return cookie
    }

    /// True when this kernel runs the program: it loads (the verifier accepts every helper it calls
    /// for this hook), cgroup2 is mounted to attach it on, and `SO_NETNS_COOKIE` answers. Run inside
    /// the capability probe's private namespace; nothing is attached.
    static func probe() -> Bool {
        guard Cgroup2Mount.find() != nil, (try? currentCookie(label: "the probe")) ?? 0 != 0 else { return false }
        return (try? load()) != nil
    }
}

extension LinuxKernel {
    /// The program and map as they are now (nil when this kernel has no hook).
    func observeSockCreate() throws -> ObservedSockCreate? {
        guard try capabilities().sockCreate else { return nil }
        let root = try SockCreateHook.Root()
        do {
            guard let (_, map) = try SockCreateHook.find(root) else { return ObservedSockCreate() }
            return ObservedSockCreate(attached: true, entries: try SockCreateHook.entries(map))
        } catch let e as KernelError where e.errno == EPERM {
            // Without CAP_SYS_ADMIN (a read-only `status`) the hook cannot be read: say nothing of it.
            return nil
        }
    }

    /// The netns cookie of a namespace's sockets, learned once per opened namespace.
    func netnsCookie(_ s: Sockets, label: String) throws -> UInt64 {
        guard try capabilities().sockCreate else { return 0 }
        if let c = s.netnsCookie { return c }
        let c = try s.netns.run { try SockCreateHook.currentCookie(label: label) }
        s.netnsCookie = c
        return c
    }

    func executeSockCreate(_ op: Operation) throws {
        let root = try SockCreateHook.Root()
        switch op.action {
        case .attachSockCreate:
            try SockCreateHook.exclusively(root) {
                // Another netshape (another state directory) attached it since this one looked:
                // its map serves these rules too, and a second program would classify twice.
                if try SockCreateHook.find(root) == nil { _ = try SockCreateHook.attach(root) }
            }
        case .detachSockCreate:
            try SockCreateHook.exclusively(root) {
                // Rules put there since this run looked are another record's: they keep the program.
                if let (_, map) = try SockCreateHook.find(root), !(try SockCreateHook.entries(map)).isEmpty { return }
                try SockCreateHook.detach(root)
            }
        case .putSockRule(let k, let v, _):
            guard let (_, map) = try SockCreateHook.find(root) else { throw notAttached(op, root) }
            try map.update(key: SockCreateProgram.keyBytes(k), value: SockCreateProgram.valueBytes(v))
        case .deleteSockRule(let k, _):
            guard let (_, map) = try SockCreateHook.find(root) else { throw notAttached(op, root) }
            guard try map.delete(key: SockCreateProgram.keyBytes(k)) else {
                throw KernelError(.state, op.command, errno: ENOENT, reason: "no such rule in the map")
            }
        default:
            throw KernelError(.state, op.command, reason: "not a sock_create operation")
        }
    }

    func notAttached(_ op: Operation, _ root: SockCreateHook.Root) -> KernelError {
        KernelError(
            .state, op.command, errno: ENOENT,
            reason: "netshape's sock_create program is not attached on \(root.path), so it has no map")
    }
}

/// Read-only views of the sock_create hook for tests and benchmarks (the engine goes through
/// `LinuxKernel.observe`).
public enum SockCreateInspection {
    /// netshape's program on the cgroup2 root and its map's entries (attached false: none).
    public static func current() throws -> ObservedSockCreate {
        let root = try SockCreateHook.Root()
        guard let (_, map) = try SockCreateHook.find(root) else { return ObservedSockCreate() }
        return ObservedSockCreate(attached: true, entries: try SockCreateHook.entries(map))
    }

    /// How many programs named like netshape's are attached on the cgroup2 root (one, or none).
    public static func attachedPrograms() throws -> Int {
        let root = try SockCreateHook.Root()
        return try BPF.query(target: root.fd, label: root.path, SockCreateHook.attachType).programIDs.filter { id in
            (try? BPF.Program.open(id: id).info().name) == SockCreate.programName
        }.count
    }

    /// The netns cookie of the namespace `target` names.
    public static func cookie(of target: NetnsTarget) throws -> UInt64 {
        try NetworkNamespace(target).run { try SockCreateHook.currentCookie(label: "\(target)") }
    }
}
