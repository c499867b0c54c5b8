/// A cgroup v2 directory as the kernel names it: its id (the directory's inode number, what
/// `bpf_skb_cgroup_id` and `bpf_skb_ancestor_cgroup_id` return) and its level (the root is 0).
public struct Cgroup2ID: Sendable, Hashable, Codable {
    public var id: UInt64
    public var level: Int
    public init(id: UInt64, level: Int) {
        self.id = id
        self.level = level
    }
}

/// One entry of a namespace's cgroup v2 classifier map: the cgroup at `path` (its id) → `classid`.
public struct Cgroup2Entry: Sendable, Hashable {
    public var path: String
    public var id: UInt64
    public var classid: TCHandle
    public init(path: String, id: UInt64, classid: TCHandle) {
        self.path = path
        self.id = id
        self.classid = classid
    }

    /// The name of the map and program of one policy entry (BPF_OBJ_NAME_LEN is 16 with the NUL):
    /// per entry, so `bpftool map show name …` finds exactly one.
    public static func objectName(namespace: String) -> String {
        let h = String(Planner.fnv1a(namespace), radix: 16)
        return "ns_cg2_" + String(repeating: "0", count: 8 - h.count) + h
    }

    /// `bpftool`'s `hex` notation of an integer's bytes in host (little-endian) order.
    static func hexBytes<T: FixedWidthInteger>(_ v: T) -> String {
        (0..<(T.bitWidth / 8)).map { i in
            let b = UInt8(truncatingIfNeeded: v >> (i * 8))
            return (b < 16 ? "0" : "") + String(b, radix: 16)
        }.joined(separator: " ")
    }

    /// `bpftool map update name NAME key hex … value hex …` for this entry.
    public func updateCommand(namespace: String) -> String {
        "bpftool map update name \(Self.objectName(namespace: namespace)) key hex \(Self.hexBytes(id)) "
            + "value hex \(Self.hexBytes(classid.raw))  # cgroup2 /\(path) -> \(classid)"
    }

    /// `bpftool map delete name NAME key hex …`.
    public func deleteCommand(namespace: String) -> String {
        "bpftool map delete name \(Self.objectName(namespace: namespace)) key hex \(Self.hexBytes(id))"
            + "  # cgroup2 /\(path) (was \(classid))"
    }
}

/// A namespace's cgroup v2 classifier as found on the machine: the program behind netshape's
/// cls_bpf filter and the map it reads.
public struct ObservedCgroup2Map: Sendable, Equatable {
    public var programID: UInt32
    public var mapID: UInt32
    public var name: String
    /// cgroup id → classid.
    public var entries: [UInt64: TCHandle]
    public init(programID: UInt32, mapID: UInt32, name: String, entries: [UInt64: TCHandle]) {
        self.programID = programID
        self.mapID = mapID
        self.name = name
        self.entries = entries
    }
}

extension MatchRules {
    /// True when the only key given is `cgroup`: such a class can be classified by cgroup v2 path.
    public var isCgroupPathsOnly: Bool {
        !cgroup.isEmpty && comm.isEmpty && exe.isEmpty && user.isEmpty && group.isEmpty && cmdline.isEmpty
            && pid.isEmpty
    }
}
