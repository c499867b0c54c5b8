import CNetshapeShim
import NetshapeCore
import Testing

@testable import NetshapeKernel

/// The sock_create program, pinned instruction by instruction from linux/bpf.h (opcodes, helper ids,
/// `offsetof(struct bpf_sock, priority)`); the integration tests load exactly these instructions.
@Suite struct SockCreateProgramTests {
    typealias I = BPF.Instruction

    static func i(_ code: UInt8, _ dst: UInt8 = 0, _ src: UInt8 = 0, _ off: Int16 = 0, _ imm: Int32 = 0) -> I {
        I(code: code, dst: dst, src: src, off: off, imm: imm)
    }
    static func i(_ code: UInt8, _ dst: UInt8 = 0, imm: Int32) -> I {
        I(code: code, dst: dst, src: 0, off: 0, imm: imm)
    }

    @Test func prologueEpilogueAndTheFirstAndLastLookupAreExact() {
        let p = SockCreateProgram.instructions(mapFD: 7)
        let prologue: [I] = [
            Self.i(0xBF, 6, 1),  // r6 = r1 (ctx)
            Self.i(0x85, imm: 122),  // call bpf_get_netns_cookie
            Self.i(0x7B, 10, 0, -40),  // *(u64 *)(fp - 40) = r0
            Self.i(0x7A, 10, 0, -56, 0), Self.i(0x7A, 10, 0, -48, 0),  // comm buffer = 0 (strscpy does not pad)
            Self.i(0xBF, 1, 10), Self.i(0x07, 1, imm: -56), Self.i(0xB7, 2, imm: 16),  // r1 = fp - 56, r2 = 16
            Self.i(0x85, imm: 16),  // call bpf_get_current_comm
            Self.i(0x85, imm: 15), Self.i(0xBF, 7, 0),  // r7 = bpf_get_current_uid_gid()
            Self.i(0xB4, 8, imm: -1), Self.i(0xB7, 9, imm: 0),  // w8 = 0xffffffff, r9 = 0
        ]
        let lookupTail: [I] = [
            Self.i(0x18, 1, 1, 0, 7), Self.i(0),  // r1 = map fd 7 (ld_imm64, BPF_PSEUDO_MAP_FD)
            Self.i(0xBF, 2, 10), Self.i(0x07, 2, imm: -40),  // r2 = fp - 40 (the key)
            Self.i(0x85, imm: 1),  // call bpf_map_lookup_elem
            Self.i(0x15, 0, 0, 4, 0),  // if r0 == 0 goto +4
            Self.i(0x61, 1, 0, 0),  // r1 = *(u32 *)(r0 + 0)  rank
            Self.i(0x3D, 1, 8, 2),  // if r1 >= r8 goto +2
            Self.i(0xBF, 8, 1), Self.i(0x61, 9, 0, 4),  // r8 = r1; r9 = *(u32 *)(r0 + 4)  classid
        ]
        let mask0: [I] =
            [
                Self.i(0x7A, 10, 0, -32, 0), Self.i(0x7A, 10, 0, -24, 0),  // comm = 0
                Self.i(0x62, 10, 0, -16, 0), Self.i(0x62, 10, 0, -12, 0),  // uid = 0, gid = 0
                Self.i(0x62, 10, 0, -8, 0), Self.i(0x62, 10, 0, -4, 0),  // mask = 0, pad
            ] + lookupTail
        let mask7: [I] =
            [
                Self.i(0x79, 1, 10, -56), Self.i(0x7B, 10, 1, -32), Self.i(0x79, 1, 10, -48), Self.i(0x7B, 10, 1, -24),
                Self.i(0x63, 10, 7, -16),  // uid = w7
                Self.i(0xBF, 1, 7), Self.i(0x77, 1, imm: 32), Self.i(0x63, 10, 1, -12),  // gid = r7 >> 32
                Self.i(0x62, 10, 0, -8, 7), Self.i(0x62, 10, 0, -4, 0),
            ] + lookupTail
        let epilogue: [I] = [
            Self.i(0x15, 9, 0, 1, 0),  // if r9 == 0 goto +1
            Self.i(0x63, 6, 9, 20),  // ctx->priority = w9
            Self.i(0xB7, 0, imm: 1), Self.i(0x95),  // return 1
        ]
        #expect(Array(p.prefix(prologue.count)) == prologue)
        #expect(Array(p[prologue.count..<prologue.count + mask0.count]) == mask0)
        #expect(Array(p.suffix(epilogue.count + mask7.count)) == mask7 + epilogue)
        // 8 lookups: 16 instructions each, +2 with comm, +2 with gid.
        #expect(p.count == prologue.count + 8 * 16 + 4 * 2 + 4 * 2 + epilogue.count)
        #expect(p.count == 161)
        // Every jump lands inside the program (the verifier would refuse it otherwise).
        for (n, insn) in p.enumerated() where insn.code == 0x15 || insn.code == 0x3D {
            #expect(n + 1 + Int(insn.off) < p.count)
        }
        #expect(netshape_bpf_insn_size() == 8)
    }

    @Test func keysAndValuesEncodeTheMapLayout() throws {
        let key = SockKey(cookie: 0x0102_0304_0506_0708, rule: SockRule(comm: "iperf3", uid: nil, gid: 50))
        let b = SockCreateProgram.keyBytes(key)
        #expect(b.count == 40)
        #expect(Array(b[0..<8]) == [0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01])
        #expect(Array(b[8..<24]) == Array("iperf3".utf8) + [UInt8](repeating: 0, count: 10))
        #expect(Array(b[24..<40]) == [0, 0, 0, 0, 50, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0])
        #expect(SockCreateProgram.key(from: b) == key)
        let wild = SockKey(cookie: 1, rule: SockRule())
        #expect(SockCreateProgram.key(from: SockCreateProgram.keyBytes(wild)) == wild)
        let v = SockVerdict(rank: 3, classid: TCHandle(major: 0x10, minor: 0x20))
        #expect(SockCreateProgram.valueBytes(v) == [3, 0, 0, 0, 0x20, 0, 0x10, 0])
        #expect(SockCreateProgram.verdict(from: SockCreateProgram.valueBytes(v)) == v)
        var bad = b
        bad[32] = 9
        #expect(SockCreateProgram.key(from: bad) == nil)
    }
}
