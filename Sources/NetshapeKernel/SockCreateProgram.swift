import NetshapeCore

/// The socket-creation classifier (`BPF_PROG_TYPE_CGROUP_SOCK` at `BPF_CGROUP_INET_SOCK_CREATE`) as
/// raw instructions. It runs in the creating task's context, so it can read the task's comm and real
/// uid/gid and the new socket's netns cookie; it looks up (cookie, comm, uid, gid) under each of the
/// eight wildcard masks in netshape's map and, when the lowest-ranked hit carries a classid, writes it
/// into `bpf_sock.priority`. It always returns 1: socket creation is never refused.
///
/// Map layout (fixed: the program and `SockCreateMap` share it):
///
///     key   (40 bytes): u64 netns cookie | u8 comm[16] (NUL-padded) | u32 uid | u32 gid | u32 mask | u32 0
///     value ( 8 bytes): u32 rank | u32 classid (0: defer to net_cls)
///
/// Fields outside the mask are 0, so a wildcard entry is one key, not one per value. The stack holds
/// the key at fp-40 and the comm the helper wrote at fp-56; r6 = ctx, r7 = uid | gid << 32,
/// r8 = best rank so far, r9 = its classid (all callee-saved, kept across helper calls).
public enum SockCreateProgram {
    static let keySize: UInt32 = 40
    static let valueSize: UInt32 = 8
    /// `offsetof(struct bpf_sock, priority)`.
    static let priorityOffset: Int16 = 20

    // Opcodes (linux/bpf.h, linux/bpf_common.h).
    static let movReg: UInt8 = 0xBF  // BPF_ALU64 | BPF_MOV | BPF_X
    static let movImm: UInt8 = 0xB7  // BPF_ALU64 | BPF_MOV | BPF_K
    static let mov32Imm: UInt8 = 0xB4  // BPF_ALU | BPF_MOV | BPF_K (zero-extends)
    static let addImm: UInt8 = 0x07  // BPF_ALU64 | BPF_ADD | BPF_K
    static let rshImm: UInt8 = 0x77  // BPF_ALU64 | BPF_RSH | BPF_K
    static let stxDW: UInt8 = 0x7B  // BPF_STX | BPF_MEM | BPF_DW
    static let stxW: UInt8 = 0x63  // BPF_STX | BPF_MEM | BPF_W
    static let stDW: UInt8 = 0x7A  // BPF_ST | BPF_MEM | BPF_DW
    static let stW: UInt8 = 0x62  // BPF_ST | BPF_MEM | BPF_W
    static let ldxDW: UInt8 = 0x79  // BPF_LDX | BPF_MEM | BPF_DW
    static let ldxW: UInt8 = 0x61  // BPF_LDX | BPF_MEM | BPF_W
    static let ldImm64: UInt8 = 0x18  // BPF_LD | BPF_DW | BPF_IMM (two slots)
    static let jeqImm: UInt8 = 0x15  // BPF_JMP | BPF_JEQ | BPF_K
    static let jgeReg: UInt8 = 0x3D  // BPF_JMP | BPF_JGE | BPF_X (unsigned)
    static let call: UInt8 = 0x85
    static let exit: UInt8 = 0x95
    /// Helper ids.
    static let mapLookupElem: Int32 = 1
    static let getCurrentUidGid: Int32 = 15
    static let getCurrentComm: Int32 = 16
    static let getNetnsCookie: Int32 = 122
    /// `BPF_PSEUDO_MAP_FD`: the ld_imm64's src_reg when imm is a map fd.
    static let pseudoMapFD: UInt8 = 1
    static let fp: UInt8 = 10

    typealias Insn = BPF.Instruction

    /// One instruction from its five fields (BPF.Instruction's builders cover only part of these).
    static func i(_ code: UInt8, _ dst: UInt8 = 0, _ src: UInt8 = 0, _ off: Int16 = 0, _ imm: Int32 = 0) -> Insn {
        Insn(code: code, dst: dst, src: src, off: off, imm: imm)
    }
    static func i(_ code: UInt8, _ dst: UInt8 = 0, _ src: UInt8 = 0, off: Int16 = 0, imm: Int32) -> Insn {
        Insn(code: code, dst: dst, src: src, off: off, imm: imm)
    }

    /// The program for the map `mapFD`.
    static func instructions(mapFD: Int32) -> [Insn] {
        var p: [Insn] = [
            i(movReg, 6, 1),  // r6 = ctx
            i(call, imm: getNetnsCookie),  // r0 = bpf_get_netns_cookie(ctx)
            i(stxDW, fp, 0, -40),  // key.cookie = r0
            // The comm buffer is zeroed first: before Linux 6.x `bpf_get_current_comm` copied with
            // strscpy, leaving the bytes after the NUL as they were (the key would not match).
            i(stDW, fp, 0, -56, 0), i(stDW, fp, 0, -48, 0),
            i(movReg, 1, fp), i(addImm, 1, imm: -56), i(movImm, 2, imm: 16),
            i(call, imm: getCurrentComm),  // bpf_get_current_comm(fp-56, 16)
            i(call, imm: getCurrentUidGid), i(movReg, 7, 0),  // r7 = gid << 32 | uid
            i(mov32Imm, 8, imm: -1),  // best rank = 0xffffffff
            i(movImm, 9, imm: 0),  // classid = 0
        ]
        for mask in UInt32(0)..<8 { p += lookup(mask: mask, mapFD: mapFD) }
        p += [
            i(jeqImm, 9, off: 1, imm: 0),  // no classid: leave the socket alone
            i(stxW, 6, 9, priorityOffset),  // ctx->priority = classid
            i(movImm, 0, imm: 1), i(exit),  // allow the socket
        ]
        return p
    }

    /// Fills the key for `mask`, looks it up, and keeps the hit if it ranks before the best so far.
    static func lookup(mask: UInt32, mapFD: Int32) -> [Insn] {
        var b: [Insn] = []
        if mask & SockCreate.commBit != 0 {
            b += [
                i(ldxDW, 1, fp, -56), i(stxDW, fp, 1, -32), i(ldxDW, 1, fp, -48), i(stxDW, fp, 1, -24),
            ]
        } else {
            b += [i(stDW, fp, 0, -32, 0), i(stDW, fp, 0, -24, 0)]
        }
        b += mask & SockCreate.uidBit != 0 ? [i(stxW, fp, 7, -16)] : [i(stW, fp, 0, -16, 0)]
        b +=
            mask & SockCreate.gidBit != 0
            ? [i(movReg, 1, 7), i(rshImm, 1, imm: 32), i(stxW, fp, 1, -12)] : [i(stW, fp, 0, -12, 0)]
        b += [
            i(stW, fp, 0, -8, Int32(mask)), i(stW, fp, 0, -4, 0),
            i(ldImm64, 1, pseudoMapFD, 0, mapFD), i(0),  // r1 = map
            i(movReg, 2, fp), i(addImm, 2, imm: -40),  // r2 = &key
            i(call, imm: mapLookupElem),
            i(jeqImm, 0, off: 4, imm: 0),  // miss
            i(ldxW, 1, 0, 0),  // r1 = value.rank
            i(jgeReg, 1, 8, 2),  // not before the best hit
            i(movReg, 8, 1), i(ldxW, 9, 0, 4),  // best = this hit
        ]
        return b
    }

    /// The encoded key of `key`.
    public static func keyBytes(_ key: SockKey) -> [UInt8] {
        var b = [UInt8]()
        b.reserveCapacity(Int(keySize))
        func le<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v) { b += $0 } }
        le(key.cookie)
        var comm = Array((key.rule.comm ?? "").utf8.prefix(15))
        comm += [UInt8](repeating: 0, count: 16 - comm.count)
        b += comm
        le(key.rule.uid ?? 0)
        le(key.rule.gid ?? 0)
        le(key.rule.mask)
        le(UInt32(0))
        return b
    }

    /// The key `bytes` encode (nil: not one netshape writes).
    public static func key(from bytes: [UInt8]) -> SockKey? {
        guard bytes.count == Int(keySize) else { return nil }
        func u32(_ at: Int) -> UInt32 { native(bytes, at) }
        let cookie: UInt64 = native(bytes, 0)
        let mask = u32(32)
        guard mask < 8, u32(36) == 0 else { return nil }
        let commBytes = bytes[8..<24].prefix { $0 != 0 }
        guard let comm = String(validating: commBytes, as: UTF8.self) else { return nil }
        return SockKey(
            cookie: cookie,
            rule: SockRule(
                comm: mask & SockCreate.commBit != 0 ? comm : nil, uid: mask & SockCreate.uidBit != 0 ? u32(24) : nil,
                gid: mask & SockCreate.gidBit != 0 ? u32(28) : nil))
    }

    public static func valueBytes(_ v: SockVerdict) -> [UInt8] {
        var b = [UInt8]()
        withUnsafeBytes(of: v.rank) { b += $0 }
        withUnsafeBytes(of: v.classid.raw) { b += $0 }
        return b
    }

    public static func verdict(from bytes: [UInt8]) -> SockVerdict? {
        guard bytes.count == Int(valueSize) else { return nil }
        func u32(_ at: Int) -> UInt32 { native(bytes, at) }
        return SockVerdict(rank: u32(0), classid: TCHandle(raw: u32(4)))
    }

    /// An integer in host byte order (the kernel reads map keys and values as the CPU stores them).
    static func native<T: FixedWidthInteger>(_ bytes: [UInt8], _ at: Int) -> T {
        var v = T.zero
        withUnsafeMutableBytes(of: &v) { $0.copyBytes(from: bytes[at..<at + MemoryLayout<T>.size]) }
        return v
    }

}
