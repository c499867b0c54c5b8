import Glibc
import NetshapeCore

/// The cgroup v2 classifier: a cls_bpf program (not direct-action, so its return value is the
/// classid, 0 = no match and HTB's default class) over a hash map of cgroup id (u64, the cgroup
/// directory's inode number) → classid (u32):
///
///     r6 = skb
///     r0 = bpf_get_cgroup_classid(skb); if r0 != 0: return r0     // net_cls first (see below)
///     for level in 16 … 0:                                         // deepest first
///         id = bpf_skb_ancestor_cgroup_id(skb, level); if id == 0: continue   // not that deep
///         v = map[id]; if v: return *v
///     return 0
///
/// net_cls is asked first so that what policy order gives to a net_cls class earlier in the
/// policy (a process the daemon or `apply` moved) and a hand placement (`classify`) win over a
/// path: a process matching an earlier cgroup-path class is never moved, so its classid stays 0.
/// Deepest first makes the most specific mapped path win; the planner drops a path an earlier
/// class's path covers, so that is also policy order. Both helpers read the packet's socket
/// (`skb->sk` survives a veth into another namespace; priority and mark do not), so this works on
/// egress only, and for any namespace's processes.
///
/// Nothing is pinned: the filter holds the program and the program the map, so deleting the filter
/// (or the tree) frees both, and a later run reopens the map through the filter's program id.
enum Cgroup2Classifier {
    static let maxEntries = Cgroup2Rule.maxEntries

    /// The program's instructions for the map at `mapFD`.
    static func instructions(mapFD: Int32, maxLevel: Int = Planner.cgroup2MaxLevel) -> [BPF.Instruction] {
        typealias I = BPF.Instruction
        var p: [I] = [.mov(.r6, .r1), .call(.getCgroupClassid), .jumpIfEqual(.r0, 0, 1), .exit]
        for level in stride(from: maxLevel, through: 0, by: -1) {
            let lookup: [I] =
                [.store(.double, .r10, -8, .r0), .mov(.r2, .r10), .add(.r2, -8)] + I.loadMap(.r1, fd: mapFD)
                + [.call(.mapLookupElem), .jumpIfEqual(.r0, 0, 2), .load(.word, .r0, .r0, 0), .exit]
            p += [.mov(.r1, .r6), .mov(.r2, Int32(level)), .call(.skbAncestorCgroupID)]
            p.append(.jumpIfEqual(.r0, 0, Int16(lookup.count)))
            p += lookup
        }
        return p + [.mov(.r0, 0), .exit]
    }

    /// Creates the map and loads the program over it, both named `name` (≤ 15 characters).
    static func load(name: String) throws -> (map: BPF.Map, program: BPF.Program) {
        let map = try BPF.Map.create(.hash, keySize: 8, valueSize: 4, maxEntries: maxEntries, name: name)
        let program = try BPF.Program.load(.schedCls, name: name, instructions(mapFD: map.fd))
        return (map, program)
    }

    /// The map of the program with id `programID` (the filter dump's `TCA_BPF_ID`), checked to be
    /// a classifier map (u64 → u32 hash).
    static func map(programID: UInt32) throws -> (BPF.Map, BPF.ProgramInfo) {
        let program = try BPF.Program.open(id: programID)
        let info = try program.info()
        guard info.mapIDs.count == 1, let id = info.mapIDs.first else {
            throw KernelError(
                .bpf, "bpf(BPF_OBJ_GET_INFO_BY_FD, program id \(programID))", errno: EINVAL,
                reason: "program \(info.name) uses \(info.mapIDs.count) maps, not netshape's one")
        }
        let map = try BPF.Map.open(id: id)
        let m = try map.info()
        guard m.type == .hash, m.keySize == 8, m.valueSize == 4 else {
            throw KernelError(
                .bpf, "bpf(BPF_OBJ_GET_INFO_BY_FD, \(map.label))", errno: EINVAL,
                reason: "a \(m.type) map with \(m.keySize)-byte keys and \(m.valueSize)-byte values is not netshape's")
        }
        return (map, info)
    }

    /// The map's entries as cgroup id → classid.
    static func entries(_ map: BPF.Map) throws -> [UInt64: TCHandle] {
        var out: [UInt64: TCHandle] = [:]
        for (k, v) in try map.entries() { out[integer(from: k)] = TCHandle(raw: integer(from: v)) }
        return out
    }

    /// Whether this kernel runs the classifier: nil when it does, else why not (for `check`,
    /// the planner's notes and the capability cache).
    static func probe() -> String? {
        guard Cgroup2Mount.find() != nil else {
            return "cgroup2 is not mounted (mount -t cgroup2 none /sys/fs/cgroup, or boot with the unified hierarchy)"
        }
        do {
            _ = try load(name: "ns_cg2_probe")
            return nil
        } catch let e as KernelError {
            if e.errno == EINVAL || e.errno == EACCES {
                return "the kernel refused the classifier program (bpf_skb_ancestor_cgroup_id needs Linux 4.19 "
                    + "and CONFIG_CGROUP_NET_CLASSID/CONFIG_SOCK_CGROUP_DATA): \(e.reason)"
            }
            return "\(e)"
        } catch {
            return "\(error)"
        }
    }
}

extension LinuxKernel {
    /// Whether `id` still names a loaded BPF program (tests: a reset must free the classifier).
    public static func bpfProgramExists(id: UInt32) -> Bool {
        do {
            _ = try BPF.Program.open(id: id)
            return true
        } catch let e as KernelError where e.errno == ENOENT {
            return false
        } catch {
            return true
        }
    }
}
