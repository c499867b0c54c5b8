import Foundation
import NetshapeCore
import NetshapeKernel
import Testing

/// The members of cgroup-path classes in `status`, and `run` into such a class, on the real
/// kernel. Part of the serialized suite.
extension ApplyIntegrationTests {
    /// `sleep 30` started in cgroup `sub` of `cg` (the shell enters it, then execs: same pid).
    func sleeper(in cg: Cgroup2Scratch, _ sub: String) throws -> Process {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = Array(cg.enter(sub, ["/bin/sleep", "30"]).dropFirst())
        try p.run()
        return p
    }

    /// SIGKILL, not terminate(): a SIGTERM the test runner ignores is ignored by its children too
    /// (the disposition survives exec), and `sleep` would run its 30 s out.
    func stop(_ p: Process) {
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    /// True once `pid`'s cgroup v2 membership is `/<cg.name>/<sub>`.
    func isIn(_ pid: Int32, _ cg: Cgroup2Scratch, _ sub: String) -> Bool {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").contains { $0 == "0::/\(cg.name)/\(sub)" }
    }

    @Test(.requiresCgroup2Classifier) func statusListsTheProcessesOfAPathClassAndItsChildCgroups() throws {
        let s = try Scratch()
        defer { s.close() }
        let cg = try Cgroup2Scratch(id: s.id)
        defer { cg.remove() }
        for d in ["app", "app/worker", "other"] { try cg.make(d) }
        let policy = try s.policy(Self.cg2Policy("\(cg.name)/app"))
        let applied = try cli("apply", policy)
        try #require(applied.status == 0, "\(applied.err)")
        // Declared after `cg`: they are stopped before its directories are removed.
        let inApp = try sleeper(in: cg, "app")
        defer { stop(inApp) }
        let inWorker = try sleeper(in: cg, "app/worker")
        defer { stop(inWorker) }
        let outside = try sleeper(in: cg, "other")
        defer { stop(outside) }
        try waitFor(seconds: 5, "the sleeps to be in their cgroups") {
            isIn(inApp.processIdentifier, cg, "app") && isIn(inWorker.processIdentifier, cg, "app/worker")
                && isIn(outside.processIdentifier, cg, "other")
        }
        let want = [inApp.processIdentifier, inWorker.processIdentifier].sorted()
        let ns = try cg2Status(policy)
        let classes = ns["classes"] as? [[String: Any]] ?? []
        let app = classes.first { $0["name"] as? String == "app" }
        #expect((app?["pids"] as? [Int])?.map(Int32.init) == want, "\(classes)")
        let rest = classes.first { $0["name"] as? String == "rest" }
        #expect((rest?["pids"] as? [Int])?.isEmpty == true, "the default class has no members: \(classes)")
        let text = try cli("status", policy, "--interval", "0")
        let line = text.out.split(separator: "\n").first { $0.hasPrefix("  app ") }
        let pids = want.map(String.init).joined(separator: ",")
        #expect(line?.contains(try Regex("cgroup2 path +\(pids)$")) == true, "\(text.out)")
        #expect(!text.out.contains("\(outside.processIdentifier)"), "a process outside the path is no member")
        #expect(try cli("reset", policy).status == 0)
    }

    /// `netshape run POLICY CLASS` into a path class starts the command in the class's directory:
    /// its packets count in the class. Started from inside a net_cls class (the outer `run`), it
    /// leaves that class, which the classifier would ask first.
    @Test(.requiresCgroup2Classifier) func runStartsTheCommandInAPathClassesCgroup() throws {
        let s = try Scratch()
        defer { s.close() }
        let cg = try Cgroup2Scratch(id: s.id)
        defer { cg.remove() }
        try cg.make("app")
        let body = """
            egress = "100mbit"
            default = "rest"
            [[namespace.class]]
            name = "app"
            rate = "10mbit"
            match.cgroup = ["\(cg.name)/app"]
            [[namespace.class]]
            name = "multi"
            rate = "10mbit"
            match.cgroup = ["\(cg.name)/a", "\(cg.name)/b"]
            [[namespace.class]]
            name = "tool"
            rate = "10mbit"
            [[namespace.class]]
            name = "rest"
            rate = "10mbit"
            """
        let policy = try s.policy(body)
        let applied = try cli("apply", policy)
        try #require(applied.status == 0, "\(applied.err)")
        let classes = try cg2Status(policy)["classes"] as? [[String: Any]] ?? []
        func id(_ name: String) -> String {
            classes.first { $0["name"] as? String == name }?["classid"] as? String ?? "?"
        }
        let before = try s.classes()
        let count = 20
        let size = 1200
        let r = try run(
            [
                netshapeBinary, "run", policy, "tool", "--", netshapeBinary, "run", policy, "app", "--", ping, "-q",
                "-c", "\(count)", "-i", "0.01", "-s", "\(size)", s.serverIP,
            ], timeout: 30)
        #expect(r.status == 0, "\(r.out)\(r.err)")
        let after = try s.classes()
        func delta(_ name: String) -> Int { (after[id(name)]?.bytes ?? 0) - (before[id(name)]?.bytes ?? 0) }
        print("run into a path class: app \(delta("app")) B, tool \(delta("tool")) B, rest \(delta("rest")) B")
        #expect(delta("app") >= count * size, "the pings went through the path class: \(delta("app")) B")
        #expect(delta("tool") == 0, "nothing through the net_cls class the caller was in: \(delta("tool")) B")
        // ARP has no socket and goes to the default class; a ping would be ≥ \(size) B.
        #expect(delta("rest") < size, "\(delta("rest")) B through the default class")
        // A class of two paths: refused, naming each directory and the shell line for it.
        let multi = try cli("run", policy, "multi", "--", "/bin/true")
        #expect(multi.status == 1, "\(multi.err)")
        #expect(
            multi.err.contains("echo $$ > \(cg.path)/a/cgroup.procs")
                && multi.err.contains("echo $$ > \(cg.path)/b/cgroup.procs")
                && multi.err.contains("ip netns exec \(s.client)"), "\(multi.err)")
        #expect(try cli("reset", policy).status == 0)
    }
}
