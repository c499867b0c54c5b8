import Foundation
import NetshapeCore
import NetshapeKernel
import Testing

/// A throwaway cgroup v2 directory (`netshape-it-<id>`) under the cgroup2 mount, removed with
/// everything below it (its processes must have exited: rmdir refuses a populated cgroup).
final class Cgroup2Scratch {
    let mount: String
    let name: String
    var path: String { "\(mount)/\(name)" }

    init(id: String) throws {
        guard let m = Cgroup2Mount.find() else { throw TestFailure("no cgroup2 mount") }
        mount = m
        name = "netshape-it-\(id)"
        try make("")
    }

    func make(_ sub: String) throws {
        let p = sub.isEmpty ? path : "\(path)/\(sub)"
        guard mkdir(p, 0o755) == 0 || errno == EEXIST else { throw TestFailure("mkdir \(p): errno \(errno)") }
    }

    /// rmdir of `sub` (and its children, deepest first); waits for exited tasks to leave.
    func remove(_ sub: String = "") {
        let top = sub.isEmpty ? path : "\(path)/\(sub)"
        let all =
            (((try? FileManager.default.subpathsOfDirectory(atPath: top)) ?? [])
            .filter { Files2.isDirectory("\(top)/\($0)") }.map { "\(top)/\($0)" } + [top])
            .sorted { $0.count > $1.count }
        for d in all {
            for _ in 0..<100 where rmdir(d) != 0 && errno == EBUSY { usleep(20_000) }
        }
    }

    func id(_ sub: String) -> UInt64? {
        Cgroup2Mount.id(mount: mount, path: sub.isEmpty ? name : "\(name)/\(sub)")?.id
    }

    /// A shell line that enters cgroup `sub` and then execs `command` (so the process and every
    /// socket it creates are in that cgroup from the start).
    func enter(_ sub: String, _ command: [String]) -> [String] {
        ["/bin/sh", "-c", "echo $$ > '\(path)/\(sub)/cgroup.procs' && exec \"$@\"", "sh"] + command
    }
}

enum Files2 {
    static func isDirectory(_ p: String) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: p, isDirectory: &isDir) && isDir.boolValue
    }
}

extension Trait where Self == ConditionTrait {
    /// The kernel can classify by cgroup v2 path (probed as netshape probes it).
    static var requiresCgroup2Classifier: Self {
        let k = Capability.kernel
        return .enabled(
            if: k?.cgroup2 == true,
            Comment(rawValue: "no cgroup2 path classifier here: \(k?.cgroup2Problem ?? "capabilities unknown")"))
    }
}

/// Classes whose rules are cgroup v2 paths, on the real kernel: shaped with no daemon and no
/// process moved, map entries followed across re-created directories (by apply and by the
/// daemon), everything removed by reset. Part of the serialized suite.
extension ApplyIntegrationTests {
    static func cg2Policy(_ cg: String) -> String {
        """
        egress = "100mbit"
        default = "rest"
        [[namespace.class]]
        name = "app"
        rate = "10mbit"
        ceil = "10mbit"
        match.cgroup = ["\(cg)"]
        [[namespace.class]]
        name = "rest"
        rate = "40mbit"
        ceil = "40mbit"
        """
    }

    func cg2Status(_ policy: String) throws -> [String: Any] {
        let r = try cli("status", policy, "--json", "--interval", "0")
        guard r.status == 0, let o = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any],
            let ns = (o["namespaces"] as? [[String: Any]])?.first
        else { throw TestFailure("status failed: \(r.err)") }
        return ns
    }

    func cg2ClassBytes(_ s: Scratch) throws -> [String: Int] { try s.classes().mapValues(\.bytes) }

    @Test(.requiresCgroup2Classifier, .requiresIperf3) func aProcessStartedInTheCgroupAfterApplyIsShapedWithNoDaemon()
        throws
    {
        let s = try Scratch()
        defer { s.close() }
        let cg = try Cgroup2Scratch(id: s.id)
        defer { cg.remove() }
        // The rule names the parent; the process runs in a child: a prefix rule.
        try cg.make("worker")
        let policy = try s.policy(Self.cg2Policy(cg.name))
        let applied = try cli("apply", policy)
        try #require(applied.status == 0, "\(applied.err)")
        #expect(!applied.out.contains("cgroup.procs"), "nothing is moved: \(applied.out)")
        #expect(
            !FileManager.default.fileExists(atPath: "/sys/fs/cgroup/net_cls/netshape/\(s.client)"),
            "no net_cls cgroup: the classes go by path, the default class takes the rest")
        let ns = try cg2Status(policy)
        let classes = ns["classes"] as? [[String: Any]] ?? []
        let app = classes.first { $0["name"] as? String == "app" }
        #expect(app?["path"] as? String == "cgroup2 path")
        #expect(classes.first { $0["name"] as? String == "rest" }?["path"] as? String == "unmatched traffic")
        let paths = app?["cgroup2Paths"] as? [[String: Any]] ?? []
        #expect(paths.first?["mapped"] as? Bool == true, "\(paths)")
        #expect((ns["cgroup2Classifier"] as? [String: Any])?["entries"] as? Int == 1)

        var before: [String: Int] = [:], after: [String: Int] = [:]
        let bps = try shapedGoodput(10e6, "cgroup2 path class") {
            before = try cg2ClassBytes(s)
            try s.iperfServer(port: 5401)
            let client = Process()
            let out = Pipe()
            client.executableURL = URL(fileURLWithPath: "/bin/sh")
            client.arguments = Array(
                cg.enter("worker", [ip, "netns", "exec", s.client] + s.iperfClient(port: 5401, seconds: 4)).dropFirst())
            client.standardOutput = out
            try client.run()
            // Its net_cls membership stays the root: nothing moved it. Read once the shell has entered
            // the cgroup (by deadline: a loaded machine delays the shell's `echo`).
            var cgroupFile = ""
            try? waitFor(seconds: 10, "the client in \(cg.name)/worker") {
                cgroupFile =
                    (try? String(contentsOfFile: "/proc/\(client.processIdentifier)/cgroup", encoding: .utf8)) ?? ""
                return cgroupFile.contains("0::/\(cg.name)/worker")
            }
            let netCls = cgroupFile.split(separator: "\n").first { $0.contains("net_cls") }
            #expect(netCls.map { $0.hasSuffix(":/") } ?? true, "net_cls membership: \(String(describing: netCls))")
            #expect(cgroupFile.contains("0::/\(cg.name)/worker"), "\(cgroupFile)")
            let json = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            client.waitUntilExit()
            let bps = try goodput(json)
            after = try cg2ClassBytes(s)
            return bps
        }
        let appID = app?["classid"] as? String ?? "?"
        let delta = after.mapValues { $0 }.merging(before.mapValues { -$0 }, uniquingKeysWith: +)
        let root = after.keys.first { $0.hasSuffix(":1") } ?? "?"
        let inApp = delta[appID] ?? 0
        let elsewhere = delta.filter { $0.key != appID && $0.key != root }.values.reduce(0, +)
        let share = Double(elsewhere) / Double(max(inApp + elsewhere, 1))
        print(
            "cgroup2 path class: goodput \(mbit(bps)) (10), \(inApp) B in the class, \(elsewhere) B elsewhere "
                + "(\(String(format: "%.3f", share * 100)) %)")
        #expect(shapedAt(bps, 10e6), "\(mbit(bps)) for a 10 Mbit/s class")
        #expect(share <= 0.01, "\(elsewhere) of \(inApp + elsewhere) bytes went through other classes")

        // reset removes filter, program and map.
        let programID = (ns["cgroup2Classifier"] as? [String: Any])?["programID"] as? Int ?? 0
        try #require(programID > 0)
        #expect(try cli("reset", policy).status == 0)
        let filters = try must([tc, "-n", s.client, "filter", "show", "dev", s.dev])
        #expect(!filters.contains("netshape_cgroup2"), "\(filters)")
        // The program (and the map it held) are gone once the filter is: the id no longer opens.
        var gone = false
        for _ in 0..<50 where !gone {
            gone = Cgroup2Probe.programExists(UInt32(programID)) == false
            if !gone { usleep(100_000) }  // freed after an RCU grace period
        }
        #expect(gone, "program \(programID) still exists after reset")
    }

    @Test(.requiresCgroup2Classifier) func pathsAreFollowedInPlaceAcrossRecreatedDirectories() throws {
        let s = try Scratch()
        defer { s.close() }
        let cg = try Cgroup2Scratch(id: s.id)
        defer { cg.remove() }
        let rule = "\(cg.name)/svc"
        let policy = try s.policy(Self.cg2Policy(rule))
        // The directory does not exist yet: applied with a note, nothing mapped.
        let first = try cli("apply", policy)
        try #require(first.status == 0, "\(first.err)")
        #expect(first.out.contains("does not exist (yet)"), "\(first.out)")
        var ns = try cg2Status(policy)
        #expect((ns["cgroup2Classifier"] as? [String: Any])?["entries"] as? Int == 0)

        try cg.make("svc")
        let id1 = try #require(cg.id("svc"))
        let plan = try cli("plan", policy, "--json")
        let ops =
            (try JSONSerialization.jsonObject(with: Data(plan.out.utf8)) as? [String: Any])?["operations"]
            as? [[String: Any]] ?? []
        #expect(ops.map { $0["object"] as? String } == ["bpf map"], "one map update, no filter rebuilt: \(ops)")
        #expect(try cli("apply", policy).status == 0)
        ns = try cg2Status(policy)
        let programID = (ns["cgroup2Classifier"] as? [String: Any])?["programID"] as? Int
        var app = (ns["classes"] as? [[String: Any]])?.first { $0["name"] as? String == "app" }
        var p = (app?["cgroup2Paths"] as? [[String: Any]])?.first
        #expect(p?["id"] as? Int == Int(id1) && p?["mapped"] as? Bool == true, "\(String(describing: p))")

        // Removed and made again (a restarted unit): a new id, mapped in place of the old one.
        cg.remove("svc")
        try cg.make("svc")
        let id2 = try #require(cg.id("svc"))
        #expect(id2 != id1)
        let again = try cli("apply", policy)
        #expect(again.status == 0, "\(again.err)")
        #expect(again.out.contains("bpftool map delete") && again.out.contains("bpftool map update"), "\(again.out)")
        #expect(!again.out.contains("tc filter"), "the filter stays: \(again.out)")
        ns = try cg2Status(policy)
        #expect((ns["cgroup2Classifier"] as? [String: Any])?["programID"] as? Int == programID)
        #expect((ns["cgroup2Classifier"] as? [String: Any])?["entries"] as? Int == 1)
        app = (ns["classes"] as? [[String: Any]])?.first { $0["name"] as? String == "app" }
        p = (app?["cgroup2Paths"] as? [[String: Any]])?.first
        #expect(p?["id"] as? Int == Int(id2) && p?["mapped"] as? Bool == true, "\(String(describing: p))")
        #expect(try cli("apply", policy).out.contains("no changes"))
    }

    @Test(.requiresCgroup2Classifier) func badCgroupPathChangesNothing() throws {
        let s = try Scratch()
        defer { s.close() }
        let good = try s.policy(name: "good", Self.cg2Policy("system.slice"))
        try #require(try cli("apply", good).status == 0)
        let before = try s.snapshot()
        let bad = try s.policy(name: "bad", Self.cg2Policy("../../etc"))
        let r = try cli("apply", bad)
        #expect(r.status == 65, "\(r.out)\(r.err)")
        #expect(r.err.contains("must not contain '.' or '..'"), "\(r.err)")
        #expect(try s.snapshot() == before)
    }
}

extension ApplyIntegrationTests {
    /// The map's entry count and whether the app class's path is mapped, from `status --json`.
    func cg2Mapped(_ policy: String) throws -> (entries: Int, mapped: Bool) {
        let ns = try cg2Status(policy)
        let app = (ns["classes"] as? [[String: Any]])?.first { $0["name"] as? String == "app" }
        let p = (app?["cgroup2Paths"] as? [[String: Any]])?.first
        return ((ns["cgroup2Classifier"] as? [String: Any])?["entries"] as? Int ?? -1, p?["mapped"] as? Bool == true)
    }

    @Test(.requiresCgroup2Classifier) func theDaemonMapsCgroupsThatAppearLater() throws {
        let s = try Scratch()
        defer { s.close() }
        let cg = try Cgroup2Scratch(id: s.id)
        defer { cg.remove() }
        // Two levels that do not exist yet: the watch moves down as they appear.
        let policy = try s.policy(Self.cg2Policy("\(cg.name)/slice/unit.service"))
        let d = try DaemonProcess(policy: policy, dir: s.dir, interval: 600)
        defer { _ = d.stop() }
        try waitFor(seconds: 10, "the daemon to watch the cgroup2 tree") { d.text.contains("watching") }
        #expect(try cg2Mapped(policy) == (0, false))
        try cg.make("slice")
        let t = Date()
        try cg.make("slice/unit.service")
        try waitFor(seconds: 5, "the daemon to map the new cgroup") { (try? self.cg2Mapped(policy).mapped) == true }
        let ms = Date().timeIntervalSince(t) * 1000
        print(
            "cgroup2: a unit's cgroup created after apply was mapped by the daemon within \(Int(ms)) ms (status polls)")
        #expect(ms < 2000, "mapped after \(Int(ms)) ms; the periodic check is 600 s away")
        // cgroup v2 refuses rename (EPERM: cgroup_rename disallows it on the default hierarchy), so a
        // unit "renamed" is one removed and another created. Removed: its entry goes.
        #expect(rename("\(cg.path)/slice/unit.service", "\(cg.path)/slice/unit.old") != 0 && errno == EPERM)
        cg.remove("slice/unit.service")
        try waitFor(seconds: 5, "the entry of the removed cgroup to go") { (try? self.cg2Mapped(policy).entries) == 0 }
        // Re-created: a new id is mapped.
        try cg.make("slice/unit.service")
        let id = try #require(cg.id("slice/unit.service"))
        try waitFor(seconds: 5, "the re-created cgroup to be mapped") {
            let ns = try? self.cg2Status(policy)
            let app = (ns?["classes"] as? [[String: Any]])?.first { $0["name"] as? String == "app" }
            let p = (app?["cgroup2Paths"] as? [[String: Any]])?.first
            return p?["id"] as? Int == Int(id) && p?["mapped"] as? Bool == true
        }
        #expect(try cg2Mapped(policy).entries == 1)
        #expect(d.text.contains("cgroup2: "), "reconciles were woken by the watch")
    }
}

/// Whether a BPF program id still names a program (through `netshape`'s own wrapper).
enum Cgroup2Probe {
    static func programExists(_ id: UInt32) -> Bool { LinuxKernel.bpfProgramExists(id: id) }
}
