/// The processes of the cgroup v2 subtrees under a policy's path rules, as `status` reads them to
/// list the members of classes classified by cgroup v2 path (net_cls classes list their cgroup's
/// `cgroup.procs`; a path class has no cgroup of its own, its rule paths and their descendants are
/// its members).
public struct ObservedCgroup2Members: Sendable, Equatable {
    /// One directory of those subtrees: its cgroup id and the processes in it (`cgroup.procs`,
    /// the directory itself only).
    public struct Directory: Sendable, Equatable {
        public var id: UInt64
        public var pids: [Int32]
        public init(id: UInt64, pids: [Int32]) {
            self.id = id
            self.pids = pids
        }
    }

    /// What the kernel reads of a member process before the classifier's map: the socket-creation
    /// program's inputs (comm, real uid/gid, network namespace) and its net_cls classid.
    public struct Process: Sendable, Equatable {
        public var comm: String
        public var uid: UInt32
        public var gid: UInt32
        /// `st_dev:st_ino` of /proc/PID/ns/net, as `ObservedNamespace.netnsID` names a namespace.
        public var netnsID: String
        /// The classid of its net_cls cgroup (0: the root, or no net_cls hierarchy).
        public var netClsClassid: TCHandle
        public init(comm: String, uid: UInt32, gid: UInt32, netnsID: String, netClsClassid: TCHandle) {
            self.comm = comm
            self.uid = uid
            self.gid = gid
            self.netnsID = netnsID
            self.netClsClassid = netClsClassid
        }
    }

    /// By path relative to the cgroup2 mount, normalised ("" = the root cgroup).
    public var directories: [String: Directory]
    /// The processes found in `directories` (one that exited between the two reads is absent).
    public var processes: [Int32: Process]

    public init(directories: [String: Directory] = [:], processes: [Int32: Process] = [:]) {
        self.directories = directories
        self.processes = processes
    }

    /// The class each process's new sockets reach through one namespace's tree, by classid, for
    /// the processes classified by the cgroup v2 map only: the decision of the kernel, in its
    /// order (Cgroup2Classifier's program and HTB before it):
    ///
    /// 1. a socket whose priority the sock_create program set (`sockTable`, the namespace's rules
    ///    as its map holds them, for processes of that network namespace) is classified by HTB from
    ///    the priority before any filter runs: not a path member;
    /// 2. the program asks net_cls first: a process with a net_cls classid (moved by the daemon into
    ///    an earlier net_cls class, placed by `classify`, or anyone's net_cls cgroup) is not one;
    /// 3. then the deepest ancestor (the directory itself included) whose id `map` holds, among
    ///    levels 0…`maxLevel` (the levels the program walks), decides.
    ///
    /// The planner leaves out of the map a path an earlier rule's path covers, so deepest-first here
    /// is the policy's first match, as it is in the kernel. Ancestors above the walked subtrees are
    /// not known by id: the rule paths are the subtrees' tops, so any mapped ancestor of theirs is
    /// itself a walked top and is found. A socket made before its process changed comm, cgroup or
    /// net_cls stays where it was classified; this lists where new sockets go.
    public func members(
        map: [UInt64: TCHandle], sockTable: [SockRule: SockVerdict] = [:], netnsID: String = "",
        maxLevel: Int = Planner.cgroup2MaxLevel
    ) -> [TCHandle: [Int32]] {
        var out: [TCHandle: [Int32]] = [:]
        for (path, dir) in directories where !dir.pids.isEmpty {
            guard let classid = Self.deepestMapped(path, directories, map, maxLevel: maxLevel) else { continue }
            for pid in dir.pids {
                guard let p = processes[pid], p.netClsClassid == .unspecified else { continue }
                if p.netnsID == netnsID,
                    let s = SockCreate.evaluate(sockTable, comm: p.comm, uid: p.uid, gid: p.gid), s != .unspecified
                {
                    continue
                }
                out[classid, default: []].append(pid)
            }
        }
        return out.mapValues { $0.sorted() }
    }

    /// The classid of the deepest ancestor of `path` (itself first) whose id `map` holds.
    static func deepestMapped(
        _ path: String, _ directories: [String: Directory], _ map: [UInt64: TCHandle], maxLevel: Int
    ) -> TCHandle? {
        let parts = path.split(separator: "/")
        for level in stride(from: min(parts.count, maxLevel), through: 0, by: -1) {
            let ancestor = parts.prefix(level).joined(separator: "/")
            if let id = directories[ancestor]?.id, let classid = map[id] { return classid }
        }
        return nil
    }
}
