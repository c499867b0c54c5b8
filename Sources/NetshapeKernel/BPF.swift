internal import CNetshapeShim
import Glibc

/// The typed bpf(2) layer every netshape BPF program is built on: the cgroup v2 classifier
/// (cls_bpf on the HTB root, issue 15) and the socket-create program (`BPF_CGROUP_INET_SOCK_CREATE`,
/// issue 19) both use it. It is deliberately general: maps, programs of any type with an expected
/// attach type, bpffs pins, cgroup attachments and queries, and a small instruction builder, each
/// command behind one logic-free shim in CNetshapeShim. Every failure is a `KernelError` of code
/// `.bpf` that keeps errno and names the command and the object (a program's verifier log is in it).
///
/// Kernel facts worth knowing here: a map or program lives while some fd, pin, filter or attachment
/// holds it, so closing netshape's fds after attaching frees nothing. Ids (`BPF_*_GET_FD_BY_ID`) are
/// unique per boot and let a later process reopen an object it did not pin.
enum BPF {
    /// `enum bpf_prog_type`.
    struct ProgramType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        var rawValue: UInt32
        static let socketFilter = ProgramType(rawValue: 1)
        static let schedCls = ProgramType(rawValue: 3)
        static let cgroupSKB = ProgramType(rawValue: 8)
        static let cgroupSock = ProgramType(rawValue: 9)
        var description: String {
            switch rawValue {
            case 1: return "socket_filter"
            case 3: return "sched_cls"
            case 8: return "cgroup_skb"
            case 9: return "cgroup_sock"
            default: return "prog_type \(rawValue)"
            }
        }
    }

    /// `enum bpf_map_type`.
    struct MapType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        var rawValue: UInt32
        static let hash = MapType(rawValue: 1)
        static let array = MapType(rawValue: 2)
        var description: String { rawValue == 1 ? "hash" : rawValue == 2 ? "array" : "map_type \(rawValue)" }
    }

    /// `enum bpf_attach_type` (also a program's expected attach type).
    struct AttachType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        var rawValue: UInt32
        static let cgroupInetIngress = AttachType(rawValue: 0)
        static let cgroupInetEgress = AttachType(rawValue: 1)
        static let cgroupInetSockCreate = AttachType(rawValue: 2)
        var description: String {
            switch rawValue {
            case 0: return "cgroup_inet_ingress"
            case 1: return "cgroup_inet_egress"
            case 2: return "cgroup_inet_sock_create"
            default: return "attach_type \(rawValue)"
            }
        }
    }

    /// `BPF_F_ALLOW_OVERRIDE`, `BPF_F_ALLOW_MULTI`, `BPF_F_REPLACE` of BPF_PROG_ATTACH.
    struct AttachFlags: OptionSet, Hashable, Sendable {
        var rawValue: UInt32
        static let allowOverride = AttachFlags(rawValue: 1)
        static let allowMulti = AttachFlags(rawValue: 2)
        static let replace = AttachFlags(rawValue: 4)
    }

    /// `BPF_ANY`, `BPF_NOEXIST`, `BPF_EXIST` of BPF_MAP_UPDATE_ELEM.
    enum UpdateMode: UInt64, Sendable {
        case any = 0
        case noExist = 1
        case exist = 2
    }

    /// `enum bpf_func_id` of the helpers netshape's programs call.
    enum Helper: Int32, Sendable {
        case mapLookupElem = 1
        case getCurrentComm = 16
        case getCgroupClassid = 17
        case skbCgroupID = 79
        case skbAncestorCgroupID = 83
        case getNetnsCookie = 122
    }

    /// bpf(2) commands (`enum bpf_cmd`) used through `netshape_bpf_map_elem`.
    static let mapLookupElem: UInt32 = 1
    static let mapUpdateElem: UInt32 = 2
    static let mapDeleteElem: UInt32 = 3

    /// Runs one bpf() shim (EINTR retried by `sysResult`) and turns -1 into a `.bpf` error naming
    /// `operation`.
    @discardableResult
    static func call(_ operation: @autoclosure () -> String, detail: () -> String = { "" }, _ body: () -> Int32)
        throws -> Int32
    {
        let (r, e) = sysResult(body)
        if r != -1 { return r }
        let extra = detail()
        throw KernelError(
            .bpf, operation(), errno: e, reason: String(cString: strerror(e)) + (extra.isEmpty ? "" : "; \(extra)"))
    }

    /// `BPF_PROG_QUERY`: the attach flags and the ids of the programs attached to `target` (a cgroup
    /// directory fd) at `type`. `label` names the target in errors.
    static func query(target: Int32, label: String, _ type: AttachType) throws -> (
        flags: AttachFlags, programIDs: [UInt32]
    ) {
        var room: UInt32 = 64
        while true {
            var ids = [UInt32](repeating: 0, count: Int(room))
            var count = room
            var flags: UInt32 = 0
            let (rc, e) = sysResult { netshape_bpf_prog_query(target, type.rawValue, 0, &flags, &ids, &count) }
            if rc == 0 { return (AttachFlags(rawValue: flags), Array(ids.prefix(Int(count)))) }
            if e == ENOSPC, count > room {
                room = count
                continue
            }
            throw KernelError(
                .bpf, "bpf(BPF_PROG_QUERY, \(label), \(type))", errno: e, reason: String(cString: strerror(e)))
        }
    }

    /// `BPF_OBJ_PIN`: keeps `fd`'s object alive at `path` in a bpffs mount. The path is resolved in
    /// the caller's mount namespace (`ip netns exec` remounts /sys and hides /sys/fs/bpf).
    static func pin(_ fd: Descriptor, at path: String) throws {
        try call("bpf(BPF_OBJ_PIN, \(fd.label) at \(path))") { netshape_bpf_obj_pin(fd.fd, path) }
    }

    /// An owned bpf object fd, closed when the last reference goes.
    final class Descriptor {
        let fd: Int32
        /// How errors name the object (`map netshape_cg2`, `program netshape_cg2`).
        let label: String
        init(fd: Int32, label: String) {
            self.fd = fd
            self.label = label
        }
        deinit { close(fd) }
    }

    /// A map's `bpf_map_info`.
    struct MapInfo: Equatable, Sendable {
        var id: UInt32
        var type: MapType
        var keySize: UInt32
        var valueSize: UInt32
        var maxEntries: UInt32
        var name: String
    }

    /// A program's `bpf_prog_info` (the parts netshape reads).
    struct ProgramInfo: Equatable, Sendable {
        var id: UInt32
        var type: ProgramType
        var name: String
        var mapIDs: [UInt32]
    }

    /// A map, by fd. Keys and values are raw bytes of the map's sizes; the integer overloads write
    /// host byte order, as a BPF program reads them.
    final class Map {
        let descriptor: Descriptor
        let keySize: Int
        let valueSize: Int
        var fd: Int32 { descriptor.fd }
        var label: String { descriptor.label }

        init(descriptor: Descriptor, keySize: Int, valueSize: Int) {
            self.descriptor = descriptor
            self.keySize = keySize
            self.valueSize = valueSize
        }

        /// `BPF_MAP_CREATE`.
        static func create(_ type: MapType, keySize: Int, valueSize: Int, maxEntries: Int, name: String) throws -> Map {
            let fd = try call("bpf(BPF_MAP_CREATE, \(type) map \(name), key \(keySize) B, value \(valueSize) B)") {
                netshape_bpf_map_create(type.rawValue, UInt32(keySize), UInt32(valueSize), UInt32(maxEntries), 0, name)
            }
            return Map(descriptor: Descriptor(fd: fd, label: "map \(name)"), keySize: keySize, valueSize: valueSize)
        }

        /// `BPF_MAP_GET_FD_BY_ID` (needs CAP_SYS_ADMIN).
        static func open(id: UInt32) throws -> Map {
            let fd = try call("bpf(BPF_MAP_GET_FD_BY_ID, map id \(id))") { netshape_bpf_map_get_fd_by_id(id) }
            return try adopt(fd: fd, fallbackLabel: "map id \(id)")
        }

        /// `BPF_OBJ_GET` of a pinned map.
        static func open(pinned path: String) throws -> Map {
            let fd = try call("bpf(BPF_OBJ_GET, \(path))") { netshape_bpf_obj_get(path, 0) }
            return try adopt(fd: fd, fallbackLabel: "map \(path)")
        }

        static func adopt(fd: Int32, fallbackLabel: String) throws -> Map {
            let d = Descriptor(fd: fd, label: fallbackLabel)
            let info = try Map.info(d)
            return Map(
                descriptor: Descriptor(fd: dup(fd), label: "map \(info.name) (id \(info.id))"),
                keySize: Int(info.keySize), valueSize: Int(info.valueSize))
        }

        static func info(_ d: Descriptor) throws -> MapInfo {
            var id: UInt32 = 0
            var type: UInt32 = 0
            var key: UInt32 = 0
            var value: UInt32 = 0
            var max: UInt32 = 0
            var name = [CChar](repeating: 0, count: 17)
            try call("bpf(BPF_OBJ_GET_INFO_BY_FD, \(d.label))") {
                netshape_bpf_map_info(d.fd, &id, &type, &key, &value, &max, &name)
            }
            return MapInfo(
                id: id, type: MapType(rawValue: type), keySize: key, valueSize: value, maxEntries: max,
                name: cString(name))
        }

        func info() throws -> MapInfo { try Map.info(descriptor) }

        func check(_ bytes: [UInt8], _ size: Int, _ what: String) throws {
            guard bytes.count == size else {
                throw KernelError(
                    .bpf, "\(label): \(what)", errno: EINVAL, reason: "\(bytes.count) bytes where the map has \(size)")
            }
        }

        /// `BPF_MAP_UPDATE_ELEM`.
        func update(key: [UInt8], value: [UInt8], mode: UpdateMode = .any) throws {
            try check(key, keySize, "key")
            try check(value, valueSize, "value")
            var v = value
            try call("bpf(BPF_MAP_UPDATE_ELEM, \(label), key \(hexBytes(key)))") {
                netshape_bpf_map_elem(BPF.mapUpdateElem, fd, key, &v, mode.rawValue)
            }
        }

        /// `BPF_MAP_LOOKUP_ELEM`; nil when the key is absent.
        func lookup(key: [UInt8]) throws -> [UInt8]? {
            try check(key, keySize, "key")
            var v = [UInt8](repeating: 0, count: valueSize)
            let rc = netshape_bpf_map_elem(BPF.mapLookupElem, fd, key, &v, 0)
            if rc == 0 { return v }
            if errno == ENOENT { return nil }
            throw KernelError.bpf("bpf(BPF_MAP_LOOKUP_ELEM, \(label), key \(hexBytes(key)))", errno)
        }

        /// `BPF_MAP_DELETE_ELEM`; false when the key was absent.
        @discardableResult
        func delete(key: [UInt8]) throws -> Bool {
            try check(key, keySize, "key")
            let rc = netshape_bpf_map_elem(BPF.mapDeleteElem, fd, key, nil, 0)
            if rc == 0 { return true }
            if errno == ENOENT { return false }
            throw KernelError.bpf("bpf(BPF_MAP_DELETE_ELEM, \(label), key \(hexBytes(key)))", errno)
        }

        /// Every key (`BPF_MAP_GET_NEXT_KEY` from NULL). A hash map changed meanwhile may restart
        /// the walk, so keys are de-duplicated.
        func keys() throws -> [[UInt8]] {
            var out: [[UInt8]] = []
            var seen = Set<[UInt8]>()
            var current: [UInt8]?
            var next = [UInt8](repeating: 0, count: keySize)
            while true {
                let rc =
                    current.map { c in netshape_bpf_map_next_key(fd, c, &next) }
                    ?? netshape_bpf_map_next_key(fd, nil, &next)
                if rc != 0 {
                    if errno == ENOENT { return out }
                    throw KernelError.bpf("bpf(BPF_MAP_GET_NEXT_KEY, \(label))", errno)
                }
                if seen.insert(next).inserted { out.append(next) } else { return out }
                current = next
            }
        }

        /// Every entry, in key walk order.
        func entries() throws -> [(key: [UInt8], value: [UInt8])] {
            try keys().compactMap { k in try lookup(key: k).map { (k, $0) } }
        }

        func update<K: FixedWidthInteger, V: FixedWidthInteger>(_ key: K, _ value: V, mode: UpdateMode = .any) throws {
            try update(key: bytes(of: key), value: bytes(of: value), mode: mode)
        }
        func lookup<K: FixedWidthInteger, V: FixedWidthInteger>(_ key: K, as: V.Type) throws -> V? {
            try lookup(key: bytes(of: key)).map { integer(from: $0) }
        }
        @discardableResult
        func delete<K: FixedWidthInteger>(_ key: K) throws -> Bool { try delete(key: bytes(of: key)) }
    }

    /// A loaded program, by fd.
    final class Program {
        let descriptor: Descriptor
        var fd: Int32 { descriptor.fd }
        var label: String { descriptor.label }
        init(descriptor: Descriptor) { self.descriptor = descriptor }

        /// `BPF_PROG_LOAD`. The verifier's log (level 1) is in the error when it refuses.
        static func load(
            _ type: ProgramType, expectedAttach: AttachType? = nil, name: String, license: String = "GPL",
            _ instructions: [Instruction]
        ) throws -> Program {
            let insns = instructions.map(\.raw)
            var log = [CChar](repeating: 0, count: 64 * 1024)
            let fd = try call(
                "bpf(BPF_PROG_LOAD, \(type) program \(name), \(insns.count) instructions)",
                detail: {
                    let text = cString(log)
                    return text.isEmpty ? "" : "verifier: " + String(text.suffix(2000))
                }
            ) {
                insns.withUnsafeBufferPointer { p in
                    netshape_bpf_prog_load_attach(
                        type.rawValue, expectedAttach?.rawValue ?? 0, p.baseAddress, UInt32(p.count), license, name,
                        &log, UInt32(log.count), 1)
                }
            }
            return Program(descriptor: Descriptor(fd: fd, label: "program \(name)"))
        }

        /// `BPF_PROG_GET_FD_BY_ID` (needs CAP_SYS_ADMIN).
        static func open(id: UInt32) throws -> Program {
            let fd = try call("bpf(BPF_PROG_GET_FD_BY_ID, program id \(id))") { netshape_bpf_prog_get_fd_by_id(id) }
            return Program(descriptor: Descriptor(fd: fd, label: "program id \(id)"))
        }

        /// `BPF_OBJ_GET` of a pinned program.
        static func open(pinned path: String) throws -> Program {
            let fd = try call("bpf(BPF_OBJ_GET, \(path))") { netshape_bpf_obj_get(path, 0) }
            return Program(descriptor: Descriptor(fd: fd, label: "program \(path)"))
        }

        /// `BPF_OBJ_GET_INFO_BY_FD`, with the ids of the maps it uses.
        func info() throws -> ProgramInfo {
            var room: UInt32 = 16
            while true {
                var id: UInt32 = 0
                var type: UInt32 = 0
                var name = [CChar](repeating: 0, count: 17)
                var maps = [UInt32](repeating: 0, count: Int(room))
                var count = room
                try call("bpf(BPF_OBJ_GET_INFO_BY_FD, \(label))") {
                    netshape_bpf_prog_info(fd, &id, &type, &name, &maps, &count)
                }
                if count > room {
                    room = count
                    continue
                }
                return ProgramInfo(
                    id: id, type: ProgramType(rawValue: type), name: cString(name),
                    mapIDs: Array(maps.prefix(Int(count))))
            }
        }

        /// `BPF_PROG_ATTACH` to `target` (a cgroup directory fd); `targetLabel` names it in errors.
        func attach(to target: Int32, targetLabel: String, _ type: AttachType, flags: AttachFlags = []) throws {
            try call("bpf(BPF_PROG_ATTACH, \(label) to \(targetLabel), \(type))") {
                netshape_bpf_prog_attach(fd, target, type.rawValue, flags.rawValue)
            }
        }

        /// `BPF_PROG_DETACH` of this program from `target`.
        func detach(from target: Int32, targetLabel: String, _ type: AttachType) throws {
            try call("bpf(BPF_PROG_DETACH, \(label) from \(targetLabel), \(type))") {
                netshape_bpf_prog_detach(fd, target, type.rawValue)
            }
        }
    }

    /// eBPF registers.
    enum Register: UInt8, Sendable {
        case r0 = 0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10
    }

    /// One eBPF instruction (`struct bpf_insn`), with builders for what netshape's programs use.
    /// Jump offsets count instructions after the jump; `loadMap` is two instructions (ld_imm64).
    struct Instruction: Equatable, Sendable {
        var code: UInt8
        var dst: UInt8
        var src: UInt8
        var off: Int16
        var imm: Int32

        var raw: bpf_insn { netshape_bpf_insn(code, dst, src, off, imm) }

        // Classes, sizes, modes, ops, sources (linux/bpf_common.h, linux/bpf.h).
        static let classLD: UInt8 = 0x00
        static let classLDX: UInt8 = 0x01
        static let classST: UInt8 = 0x02
        static let classSTX: UInt8 = 0x03
        static let classJMP: UInt8 = 0x05
        static let classALU64: UInt8 = 0x07
        static let sizeW: UInt8 = 0x00
        static let sizeH: UInt8 = 0x08
        static let sizeB: UInt8 = 0x10
        static let sizeDW: UInt8 = 0x18
        static let modeIMM: UInt8 = 0x00
        static let modeMEM: UInt8 = 0x60
        static let sourceK: UInt8 = 0x00
        static let sourceX: UInt8 = 0x08
        static let opADD: UInt8 = 0x00
        static let opMOV: UInt8 = 0xB0
        static let jmpJA: UInt8 = 0x00
        static let jmpJEQ: UInt8 = 0x10
        static let jmpJNE: UInt8 = 0x50
        static let jmpCALL: UInt8 = 0x80
        static let jmpEXIT: UInt8 = 0x90

        /// Memory access width.
        enum Size: UInt8, Sendable {
            case byte = 0x10, half = 0x08, word = 0x00, double = 0x18
        }

        static func mov(_ dst: Register, _ imm: Int32) -> Instruction {
            Instruction(code: classALU64 | opMOV | sourceK, dst: dst.rawValue, src: 0, off: 0, imm: imm)
        }
        static func mov(_ dst: Register, _ src: Register) -> Instruction {
            Instruction(code: classALU64 | opMOV | sourceX, dst: dst.rawValue, src: src.rawValue, off: 0, imm: 0)
        }
        static func add(_ dst: Register, _ imm: Int32) -> Instruction {
            Instruction(code: classALU64 | opADD | sourceK, dst: dst.rawValue, src: 0, off: 0, imm: imm)
        }
        /// `*(size *)(dst + off) = src`
        static func store(_ size: Size, _ dst: Register, _ off: Int16, _ src: Register) -> Instruction {
            Instruction(
                code: classSTX | modeMEM | size.rawValue, dst: dst.rawValue, src: src.rawValue, off: off, imm: 0)
        }
        /// `*(size *)(dst + off) = imm`
        static func store(_ size: Size, _ dst: Register, _ off: Int16, imm: Int32) -> Instruction {
            Instruction(code: classST | modeMEM | size.rawValue, dst: dst.rawValue, src: 0, off: off, imm: imm)
        }
        /// `dst = *(size *)(src + off)`
        static func load(_ size: Size, _ dst: Register, _ src: Register, _ off: Int16) -> Instruction {
            Instruction(
                code: classLDX | modeMEM | size.rawValue, dst: dst.rawValue, src: src.rawValue, off: off, imm: 0)
        }
        /// `dst = map` (ld_imm64 with BPF_PSEUDO_MAP_FD): two instructions.
        static func loadMap(_ dst: Register, fd: Int32) -> [Instruction] {
            [
                Instruction(
                    code: classLD | sizeDW | modeIMM, dst: dst.rawValue, src: netshape_bpf_pseudo_map_fd(), off: 0,
                    imm: fd),
                Instruction(code: 0, dst: 0, src: 0, off: 0, imm: 0),
            ]
        }
        static func call(_ helper: Helper) -> Instruction {
            Instruction(code: classJMP | jmpCALL, dst: 0, src: 0, off: 0, imm: helper.rawValue)
        }
        static let exit = Instruction(code: classJMP | jmpEXIT, dst: 0, src: 0, off: 0, imm: 0)
        static func jump(_ off: Int16) -> Instruction {
            Instruction(code: classJMP | jmpJA, dst: 0, src: 0, off: off, imm: 0)
        }
        static func jumpIfEqual(_ dst: Register, _ imm: Int32, _ off: Int16) -> Instruction {
            Instruction(code: classJMP | jmpJEQ | sourceK, dst: dst.rawValue, src: 0, off: off, imm: imm)
        }
        static func jumpIfNotEqual(_ dst: Register, _ imm: Int32, _ off: Int16) -> Instruction {
            Instruction(code: classJMP | jmpJNE | sourceK, dst: dst.rawValue, src: 0, off: off, imm: imm)
        }
    }
}

extension KernelError {
    /// A failed bpf() command: keeps `errno` and its strerror text.
    static func bpf(_ operation: String, _ err: Int32) -> KernelError {
        KernelError(.bpf, operation, errno: err, reason: String(cString: strerror(err)))
    }
}

/// The bytes of an integer in host order (how a BPF program on this machine reads a map key).
func bytes<T: FixedWidthInteger>(of value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

/// An integer from its host-order bytes (missing high bytes are zero).
func integer<T: FixedWidthInteger>(from bytes: [UInt8]) -> T {
    var v: T = 0
    withUnsafeMutableBytes(of: &v) { dst in
        for (i, b) in bytes.prefix(dst.count).enumerated() { dst[i] = b }
    }
    return v
}

func hexBytes(_ b: [UInt8]) -> String {
    b.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
}

/// A NUL-terminated C buffer as a String.
func cString(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
