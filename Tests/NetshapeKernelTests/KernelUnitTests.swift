import CNetshapeShim
import Foundation
import NetshapeCore
import Testing

@testable import NetshapeKernel

/// Wire formats, pinned byte for byte. Derived field by field from the kernel's UAPI headers
/// (linux/netlink.h, linux/rtnetlink.h, linux/pkt_cls.h, linux/bpf.h) and checked against the
/// running kernel by the integration tests, which load exactly these bytes.
@Suite struct GoldenBytesTests {
    @Test func bpfClassifierProgram() {
        let insns = BPFClassifier.instructions()
        let bytes = insns.flatMap { i in withUnsafeBytes(of: i) { Array($0) } }
        #expect(netshape_bpf_insn_size() == 8)
        #expect(
            bytes == [
                // BPF_JMP|BPF_CALL, dst/src 0, off 0, imm = BPF_FUNC_get_cgroup_classid (17)
                0x85, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00,
                // BPF_JMP|BPF_EXIT: return r0 (the classid; 0 = no match)
                0x95, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ])
    }

    /// `tc filter add dev <ifindex 2> parent 3811: protocol all prio 16606 handle 1 bpf fd 7 name netshape_classid`
    @Test func addBpfFilterRequest() {
        let f = FilterSpec(parent: TCHandle(major: 0x3811, minor: 0), kind: .bpf, priority: 16606, handle: 1)
        var request = FilterSocket.addBpfFilterRequest(ifindex: 2, f, programFD: 7)
        request.seq = 1
        let bytes = request.bytes
        let name = Array("netshape_classid".utf8)
        let expected: [UInt8] =
            [
                // struct nlmsghdr
                0x50, 0x00, 0x00, 0x00,  // nlmsg_len = 80
                0x2C, 0x00,  // nlmsg_type = RTM_NEWTFILTER (44)
                0x05, 0x06,  // nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE
                0x01, 0x00, 0x00, 0x00,  // nlmsg_seq = 1 (masked in real use: a counter)
                0x00, 0x00, 0x00, 0x00,  // nlmsg_pid = 0 (the kernel)
                // struct tcmsg
                0x00, 0x00, 0x00, 0x00,  // tcm_family = AF_UNSPEC, padding
                0x02, 0x00, 0x00, 0x00,  // tcm_ifindex = 2
                0x01, 0x00, 0x00, 0x00,  // tcm_handle = 1
                0x00, 0x00, 0x11, 0x38,  // tcm_parent = 3811:0
                0x00, 0x03, 0xDE, 0x40,  // tcm_info = prio 16606 << 16 | htons(ETH_P_ALL)
                // TCA_KIND "bpf"
                0x08, 0x00, 0x01, 0x00, 0x62, 0x70, 0x66, 0x00,
                // TCA_OPTIONS, nested (NLA_F_NESTED), 36 bytes
                0x24, 0x00, 0x02, 0x80,
                //   TCA_BPF_FD = 7
                0x08, 0x00, 0x06, 0x00, 0x07, 0x00, 0x00, 0x00,
                //   TCA_BPF_NAME "netshape_classid\0" (21 bytes, padded to 24). No TCA_BPF_FLAGS:
                //   not direct-action, so the program's return value is the whole classid.
                0x15, 0x00, 0x07, 0x00,
            ] + name + [0x00, 0x00, 0x00, 0x00]
        #expect(bytes == expected)
    }

    @Test func filterInfoCarriesPriorityAndProtocol() {
        #expect(FilterSocket.filterInfo(priority: 1) == 0x0001_0300)
    }
}

@Suite struct ParsingTests {
    @Test func mountinfoFindsNetCls() {
        let text = """
            22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
            30 22 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
            41 30 0:36 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:19 - cgroup cgroup rw,net_cls,net_prio
            42 30 0:37 /docker /sys/fs/cgroup/cpu rw shared:20 - cgroup cgroup rw,cpu
            """
        let entries = MountInfoEntry.parse(text)
        #expect(entries.count == 4)
        #expect(MountInfoEntry.netClsMount(in: entries) == "/sys/fs/cgroup/net_cls,net_prio")
        #expect(MountInfoEntry.netClsMount(in: Array(entries.prefix(2))) == nil)
    }

    @Test func mountinfoUnescapesBlanks() {
        let e = MountInfoEntry.parse("1 2 0:1 / /mnt/with\\040space rw - cgroup cgroup rw,net_cls")
        #expect(e.first?.mountPoint == "/mnt/with space")
    }

    /// The parse reads this machine's mountinfo and random lines as the plain split-everything
    /// parse did (escapes, short lines, separators at odd places).
    @Test func mountinfoParseAgreesWithSplittingEveryField() throws {
        func reference(_ text: String) -> [MountInfoEntry] {
            text.split(separator: "\n").compactMap { line in
                let f = line.split(separator: " ").map(String.init)
                guard let dash = f.firstIndex(of: "-"), dash >= 6, f.count > dash + 3 else { return nil }
                return MountInfoEntry(
                    root: MountInfoEntry.unescape(f[3]), mountPoint: MountInfoEntry.unescape(f[4]), fsType: f[dash + 1],
                    superOptions: f[dash + 3].split(separator: ",").map(String.init))
            }
        }
        let mine = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        #expect(MountInfoEntry.parse(mine) == reference(mine))
        #expect(!MountInfoEntry.parse(mine).isEmpty)
        let words = ["1", "0:2", "/", "/a\\040b", "\\134x", "-", "cgroup", "rw,net_cls", "é", "", ","]
        var state: UInt64 = 42
        for _ in 0..<2000 {
            var fields: [String] = []
            for _ in 0..<(3 + Int(state % 9)) {
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                fields.append(words[Int(state >> 33) % words.count])
            }
            let line = fields.joined(separator: " ") + (state & 1 == 0 ? "\n" : "")
            #expect(MountInfoEntry.parse(line) == reference(line), "\(line.debugDescription)")
        }
    }

    @Test func procCgroupLines() {
        let v1 = ProcScanner.cgroups(
            """
            12:net_cls,net_prio:/netshape/web/frontend
            4:cpu,cpuacct:/user.slice
            1:name=systemd:/system.slice/nginx.service
            0::/system.slice/nginx.service
            """)
        #expect(v1.netCls == "netshape/web/frontend")
        #expect(v1.unified == "/system.slice/nginx.service")
        let legacy = ProcScanner.cgroups("3:net_cls:/\n1:name=systemd:/user.slice/session-1.scope\n")
        #expect(legacy.netCls == "")
        #expect(legacy.unified == "/user.slice/session-1.scope")
    }

    @Test func kernelThreadsAreRecognised() {
        // comm may hold spaces and parentheses; flags is the 7th field after it (PF_KTHREAD = 0x200000).
        #expect(ProcScanner.isKernelThread("2 (kthreadd) S 0 0 0 0 -1 2129984 0 0"))
        #expect(!ProcScanner.isKernelThread("1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0"))
    }
}

/// cgroupfs code against a temp-dir fixture: directories behave like cgroupfs for mkdir/rmdir,
/// and the control files are created by the test where the kernel would create them.
@Suite struct NetClsFixtureTests {
    func fixture() throws -> (URL, NetClsHierarchy) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("netcls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return (dir, NetClsHierarchy(root: dir.path))
    }

    /// The classid parse reads bytes, and agrees with splitting at whitespace and `UInt32(_:)`
    /// on everything cgroupfs can print (digits, blanks, newlines) and on garbage.
    @Test func classidParseAgreesWithSplitting() {
        #expect(NetClsHierarchy.decimal("65552\n") == 65552)
        #expect(NetClsHierarchy.decimal("0\n") == 0)
        #expect(NetClsHierarchy.decimal("4294967295") == UInt32.max)
        #expect(NetClsHierarchy.decimal("4294967296") == nil)
        #expect(NetClsHierarchy.decimal("") == nil)
        #expect(NetClsHierarchy.decimal("12x") == nil)
        let alphabet: [Character] = ["0", "1", "7", "9", " ", "\n", "\t", "x"]
        var state: UInt64 = 0x5EED
        for _ in 0..<5000 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            var text = ""
            for k in 0..<Int(state >> 60) { text.append(alphabet[Int((state >> UInt64(4 * k)) & 7)]) }
            let old = UInt32(text.split(whereSeparator: \.isWhitespace).first ?? "")
            #expect(NetClsHierarchy.decimal(text) == old, "\(text.debugDescription)")
        }
    }

    @Test func createWriteReadRemove() throws {
        let (dir, h) = try fixture()
        defer { try? FileManager.default.removeItem(at: dir) }
        try h.create("netshape", classid: .unspecified)
        try h.create("netshape/web", classid: .unspecified)
        try h.create("netshape/web/frontend", classid: .unspecified)
        let cls = dir.appendingPathComponent("netshape/web/frontend/net_cls.classid")
        try "0\n".write(to: cls, atomically: false, encoding: .utf8)
        try "".write(
            to: dir.appendingPathComponent("netshape/web/frontend/cgroup.procs"), atomically: false, encoding: .utf8)
        try h.setClassID("netshape/web/frontend", TCHandle(major: 0x3811, minor: 0xFE2D))
        #expect(try String(contentsOf: cls, encoding: .utf8) == String(0x3811_FE2D), "written in decimal")
        #expect(h.classid("netshape/web/frontend") == TCHandle(major: 0x3811, minor: 0xFE2D))
        let listed = h.listNetshape(namespaces: ["web"])
        #expect(listed.keys.sorted() == ["netshape", "netshape/web", "netshape/web/frontend"])
        try FileManager.default.removeItem(at: cls)
        try FileManager.default.removeItem(at: dir.appendingPathComponent("netshape/web/frontend/cgroup.procs"))
        try h.remove("netshape/web/frontend")
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("netshape/web/frontend").path))
    }

    /// What a listing reads: classids, members only where asked, foreign subdirectories, and with
    /// `only` just those paths (a missing one is absent); symlinks are never taken for cgroups.
    @Test func listingReadsClassidsMembersAndChildren() throws {
        let (dir, h) = try fixture()
        defer { try? FileManager.default.removeItem(at: dir) }
        func make(_ path: String, classid: UInt32, pids: [Int32]) throws {
            let d = dir.appendingPathComponent(path)
            try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
            try "\(classid)\n".write(
                to: d.appendingPathComponent("net_cls.classid"), atomically: false, encoding: .utf8)
            try pids.map { "\($0)\n" }.joined().write(
                to: d.appendingPathComponent("cgroup.procs"), atomically: false, encoding: .utf8)
        }
        try make("netshape", classid: 0, pids: [])
        try make("netshape/web", classid: 0, pids: [])
        try make("netshape/web/a", classid: 0x10_0010, pids: [7, 8])
        try make("netshape/web/b", classid: 0x10_0011, pids: [9])
        try make("netshape/web/b/foreign", classid: 0, pids: [])
        try FileManager.default.createSymbolicLink(
            at: dir.appendingPathComponent("netshape/web/link"),
            withDestinationURL: dir.appendingPathComponent("netshape/web/a"))
        let all = h.listNetshape(namespaces: ["web"], withoutMembers: ["netshape/web/a"])
        #expect(all.keys.sorted() == ["netshape", "netshape/web", "netshape/web/a", "netshape/web/b"])
        #expect(all["netshape/web/a"]?.classid == TCHandle(raw: 0x10_0010))
        #expect(all["netshape/web/a"]?.pids == [], "members not asked for")
        #expect(all["netshape/web/b"]?.pids == [9])
        #expect(all["netshape/web/b"]?.children == ["foreign"])
        #expect(all["netshape/web/a"]?.children == [])
        let some = h.listNetshape(
            namespaces: ["web"], only: ["netshape/web/b", "netshape/web/gone", "netshape/web/link"], withoutMembers: [])
        #expect(some.keys.sorted() == ["netshape/web/b"])
        #expect(some["netshape/web/b"]?.classid == TCHandle(raw: 0x10_0011))
        #expect(some["netshape/web/b"]?.pids == [9])
        #expect(some["netshape/web/b"]?.children == ["foreign"])
    }

    /// A listing shared by several threads reads exactly what one thread reads alone.
    @Test func aSharedListingReadsWhatOneThreadReads() throws {
        let (dir, h) = try fixture()
        defer { try? FileManager.default.removeItem(at: dir) }
        for path in ["netshape", "netshape/a", "netshape/b"]
            + (0..<300).map({ "netshape/\($0 % 2 == 0 ? "a" : "b")/c\($0)" })
        {
            let d = dir.appendingPathComponent(path)
            try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
            try "\(path.count * 65_537)\n".write(
                to: d.appendingPathComponent("net_cls.classid"), atomically: false, encoding: .utf8)
            try "\(path.count)\n".write(
                to: d.appendingPathComponent("cgroup.procs"), atomically: false, encoding: .utf8)
        }
        let alone = h.listNetshape(namespaces: ["a", "b", "missing"], withoutMembers: ["netshape/a/c0"])
        #expect(alone.count == 303)
        for _ in 0..<20 {
            let l = h.listing(namespaces: ["a", "b", "missing"], withoutMembers: ["netshape/a/c0"])
            let helpers = (0..<3).map { _ in Thread { l.work() } }
            helpers.forEach { $0.start() }
            l.work()
            while helpers.contains(where: { !$0.isFinished }) { usleep(100) }
            #expect(l.finish() == alone)
        }
    }

    @Test func symlinksInsideTheTreeAreNeverFollowed() throws {
        let (dir, h) = try fixture()
        defer { try? FileManager.default.removeItem(at: dir) }
        let outside = dir.appendingPathComponent("outside")
        try FileManager.default.createDirectory(at: outside, withIntermediateDirectories: true)
        let root = dir.appendingPathComponent("root")
        try FileManager.default.createDirectory(
            at: root.appendingPathComponent("netshape"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(
            at: root.appendingPathComponent("netshape/evil"), withDestinationURL: outside)
        let hier = NetClsHierarchy(root: root.path)
        #expect(throws: KernelError.self) { try hier.create("netshape/evil/x", classid: .unspecified) }
        #expect(throws: KernelError.self) { try hier.move(pid: 1, to: "netshape/evil") }
        #expect(!FileManager.default.fileExists(atPath: outside.appendingPathComponent("x").path))
        #expect(throws: KernelError.self) { try h.create("netshape/../../etc", classid: .unspecified) }
    }
}

/// The HTTP/1.1 client for dockerd's socket: responses as dockerd 20.10 sends them.
@Suite struct UnixHTTPTests {
    func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

    /// `curl --unix-socket /var/run/docker.sock -i localhost/containers/x/json` (headers trimmed).
    @Test func contentLengthResponse() throws {
        let r = try HTTPResponse.parse(
            bytes(
                "HTTP/1.1 404 Not Found\r\nApi-Version: 1.41\r\nContent-Length: 34\r\n\r\n"
                    + "{\"message\":\"No such container: x\"}\r\n\r\n--trailing"),
            what: "test")
        #expect(r.status == 404)
        #expect(r.headers["api-version"] == "1.41")
        #expect(String(decoding: r.body, as: UTF8.self) == "{\"message\":\"No such container: x\"}")
    }

    @Test func chunkedResponse() throws {
        let r = try HTTPResponse.parse(
            bytes("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[{}]\r\n3;ext=1\r\n,{}\r\n0\r\n\r\n"),
            what: "test")
        #expect(r.status == 200)
        #expect(String(decoding: r.body, as: UTF8.self) == "[{}],{}")
    }

    @Test func notHTTPIsAnError() {
        #expect(throws: KernelError.self) { try HTTPResponse.parse(bytes("SSH-2.0-OpenSSH\r\n\r\n"), what: "test") }
        #expect(throws: KernelError.self) { try HTTPResponse.parse(bytes("HTTP/1.1 200 OK\r\n"), what: "test") }
    }

    /// `/events` arrives one chunk per event, split anywhere by the socket.
    @Test func chunkedDecoderAcrossArbitrarySplits() throws {
        let wire = bytes("1b\r\n{\"Action\":\"start\",\"id\":\"1\"}\r\n19\r\n{\"Action\":\"die\",\"id\":\"1\"}\r\n")
        for split in 1..<wire.count {
            var d = ChunkedDecoder()
            var out = try d.feed(Array(wire[..<split]), what: "t")
            out += try d.feed(Array(wire[split...]), what: "t")
            #expect(
                String(decoding: out, as: UTF8.self)
                    == "{\"Action\":\"start\",\"id\":\"1\"}{\"Action\":\"die\",\"id\":\"1\"}")
        }
        var d = ChunkedDecoder()
        #expect(throws: KernelError.self) { try d.feed(bytes("zz\r\n"), what: "t") }
    }

    @Test func filtersArePercentEncoded() {
        #expect(percentEncoded("{\"label\":[\"a=b\"]}") == "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D")
        #expect(percentEncoded("web-1_x.y~") == "web-1_x.y~")
    }

    @Test func aMissingSocketReadsAsNotRunning() throws {
        let c = UnixHTTPClient(socketPath: "/nonexistent/netshape-test/docker.sock", service: "Docker")
        do {
            _ = try c.get("/_ping")
            Issue.record("connect to a missing socket succeeded")
        } catch let e as KernelError {
            #expect(e.code == .notFound)
            #expect(e.errno == ENOENT)
            #expect(e.reason.contains("cannot reach Docker at /nonexistent/netshape-test/docker.sock"))
        }
    }

    @Test func runProgramKeepsStatusAndOutput() throws {
        let (status, out, err) = try runProgram(["sh", "-c", "echo out; echo err >&2; exit 3"])
        #expect(status == 3 && out == "out\n" && err == "err\n")
        #expect(throws: KernelError.self) { try runProgram(["netshape-no-such-program-x"]) }
    }
}
