import NetshapeCore
import NetshapeEngine
import NetshapePolicy
import NetshapeTestSupport
import Testing

@testable import NetshapeCLI

/// How `check`, `plan` and `status` say a class is classified, over the fake kernel.
@Suite struct Cgroup2RenderTests {
    static let text = """
        version = 1
        [[namespace]]
        name = "web"
        device = "eth0"
        egress = "100mbit"
        default = "rest"
        [[namespace.class]]
        name = "backup"
        rate = "10mbit"
        match.cgroup = ["system.slice/backup.service"]
        [[namespace.class]]
        name = "rest"
        rate = "10mbit"
        match.comm = ["curl"]
        """

    @Test func checkExplainsAKernelWithoutTheClassifier() throws {
        let policy = try PolicyParser.parse(Self.text, file: "p.toml")
        var caps = KernelCapabilities.stock
        caps.cgroup2 = false
        caps.cgroup2Problem = "cgroup2 is not mounted"
        let lines = Render.kernelSupport(policy, caps)
        #expect(
            lines.contains { $0.contains("class backup is classified through net_cls") && $0.contains("not mounted") })
        let good = Render.kernelSupport(policy, .stock)
        #expect(good.contains { $0.contains("classified in the kernel by cgroup v2 path") && $0.hasSuffix("backup") })
        #expect(Render.kernelSupport(policy, nil).first?.contains("not probed") == true)
    }

    @Test func runAndClassifySayWhyAPathClassHasNoNetClsCgroup() throws {
        let policy = try PolicyParser.parse(Self.text, file: "p.toml")
        let ns = try #require(try Planner.plan(policy, capabilities: .stock).namespace("web"))
        let backup = try #require(ns.classes.first { $0.name == "backup" })
        let why = try #require(Render.noNetClsCgroup(backup, "web"))
        #expect(why.contains("cgroup v2 path (/system.slice/backup.service)") && why.contains("cgroup.procs"))
        #expect(Render.noNetClsCgroup(try #require(ns.classes.first { $0.name == "rest" }), "web") == nil)
    }

    @Test func planAndStatusSayHowEachClassIsClassified() throws {
        let policy = try PolicyParser.parse(Self.text, file: "p.toml")
        let k = FakeKernel(capabilities: .stock)
        k.addNamespace("web")
        let id = k.makeCgroup2("system.slice/backup.service")
        let engine = Engine(kernel: k)
        let plan = try engine.plan(policy, policyPath: "/p.toml")
        let text = Render.plan(plan, policyPath: "/p.toml")
        #expect(text.contains("cgroup2 path /system.slice/backup.service"), "\(text)")
        #expect(text.contains("bpftool map update name ns_cg2_"), "\(text)")
        _ = try engine.apply(policy, policyPath: "/p.toml")
        let status = try engine.status(policy, interval: 0, sleep: { _ in })
        let backup = status.namespaces.first?.classes.first { $0.name == "backup" }
        #expect(backup?.path == "cgroup2 path")
        #expect(backup?.cgroup2Paths == [Cgroup2PathStatus(path: "/system.slice/backup.service", id: id, mapped: true)])
        #expect(status.namespaces.first?.classes.first { $0.name == "rest" }?.path == "daemon+net_cls")
        let rendered = Render.status(status)
        #expect(rendered.contains("backup: classified by cgroup2 path: /system.slice/backup.service (id \(id))"))
        #expect(rendered.contains("cgroup2 classifier ns_cg2_"), "\(rendered)")
        // The class has no net_cls cgroup; the net_cls class keeps its own.
        #expect(k.cgroups["netshape/web/backup"] == nil && k.cgroups["netshape/web/rest"] != nil)
    }

    /// Every classification path at once: a comm class (sock_create), an exe class (the daemon), a
    /// class without rules (by hand), a path class; and the default beside only path classes.
    static let allPaths = """
        version = 1
        [[namespace]]
        name = "web"
        device = "eth0"
        egress = "100mbit"
        default = "manual"
        [[namespace.class]]
        name = "front"
        rate = "10mbit"
        match.comm = ["nginx"]
        [[namespace.class]]
        name = "tool"
        rate = "10mbit"
        match.exe = ["/usr/bin/tool"]
        [[namespace.class]]
        name = "backup"
        rate = "10mbit"
        match.cgroup = ["system.slice/backup.service"]
        [[namespace.class]]
        name = "manual"
        rate = "10mbit"
        [[namespace]]
        name = "db"
        device = "eth0"
        egress = "50mbit"
        default = "rest"
        [[namespace.class]]
        name = "jobs"
        rate = "10mbit"
        match.cgroup = ["jobs.slice"]
        [[namespace.class]]
        name = "rest"
        rate = "10mbit"
        """

    static var sockCaps: KernelCapabilities {
        var c = KernelCapabilities.stock
        c.sockCreate = true
        return c
    }

    func fake() -> FakeKernel {
        let k = FakeKernel(capabilities: Self.sockCaps)
        k.addNamespace("web")
        k.addNamespace("db")
        k.makeCgroup2("system.slice/backup.service")
        k.makeCgroup2("jobs.slice")
        return k
    }

    /// The plan says, before anything is applied, what `status` says after: the same words from
    /// the same decision (the sock_create map as the plan's operations leave it).
    @Test func planSaysEachClassesPathAsStatusDoesAfterApply() throws {
        let policy = try PolicyParser.parse(Self.allPaths, file: "p.toml")
        let k = fake()
        let engine = Engine(kernel: k)
        let plan = try engine.plan(policy, policyPath: "/p.toml")
        let json = PlanJSON(policy: "/p.toml", plan: plan)
        var planned: [String: String] = [:]
        for ns in json.namespaces { for c in ns.classes { planned["\(ns.name)/\(c.name)"] = c.path } }
        #expect(
            planned == [
                "web/front": "sock_create", "web/tool": "daemon+net_cls", "web/backup": "cgroup2 path",
                "web/manual": "net_cls", "db/jobs": "cgroup2 path", "db/rest": "unmatched traffic",
            ])
        _ = try engine.apply(policy, policyPath: "/p.toml")
        let status = try engine.status(policy, interval: 0, sleep: { _ in })
        var shown: [String: String] = [:]
        for ns in status.namespaces { for c in ns.classes { shown["\(ns.name)/\(c.name)"] = c.path } }
        #expect(shown == planned)
        // Once applied, the plan reads the same map status does, and still agrees.
        let again = PlanJSON(policy: "/p.toml", plan: try engine.plan(policy, policyPath: "/p.toml"))
        let replanned = again.namespaces.flatMap { ns in ns.classes.map { c in "\(ns.name)/\(c.name)=\(c.path)" } }
        #expect(replanned.sorted() == shown.map { "\($0)=\($1)" }.sorted())
        // A kernel without the socket-creation hook: the comm class is the daemon's, in both.
        let off = FakeKernel(capabilities: .stock)
        off.addNamespace("web")
        off.addNamespace("db")
        let offPlan = PlanJSON(policy: "/p.toml", plan: try Engine(kernel: off).plan(policy, policyPath: "/p.toml"))
        #expect(offPlan.namespaces.first?.classes.first { $0.name == "front" }?.path == "daemon+net_cls")
    }

    /// Golden: the class table of `plan` with its path column.
    @Test func planTableGolden() throws {
        let policy = try PolicyParser.parse(Self.allPaths, file: "p.toml")
        let text = Render.plan(try Engine(kernel: fake()).plan(policy, policyPath: "/p.toml"), policyPath: "/p.toml")
        let table = text.split(separator: "\n").filter { $0.hasPrefix("  ") && !$0.hasPrefix("  changes") }
            .filter { !$0.hasPrefix("    ") }.map { String($0) }
        // Classids are the planner's name hashes (stable across runs); the column is the point.
        let expected = [
            "  class     classid    rate    ceil     prio  leaf      path",
            "  front     3811:ea8   10mbit  100mbit  4     fq_codel  sock_create",
            "  tool      3811:3eb7  10mbit  100mbit  4     fq_codel  daemon+net_cls",
            "  backup    3811:fd8f  10mbit  100mbit  4     fq_codel  cgroup2 path /system.slice/backup.service",
            "  manual *  3811:2     10mbit  100mbit  4     fq_codel  net_cls",
            "  class   classid    rate    ceil    prio  leaf      path",
            "  jobs    2bc3:94ed  10mbit  50mbit  4     fq_codel  cgroup2 path /jobs.slice",
            "  rest *  2bc3:2     10mbit  50mbit  4     fq_codel  unmatched traffic",
        ]
        #expect(table == expected, "\(text)")
    }

    /// The implicit default class (no `default`, no rules) is unmatched traffic in both.
    @Test func theImplicitDefaultIsUnmatchedTrafficInPlanAndStatus() throws {
        let policy = try PolicyParser.parse(
            "version = 1\n[[namespace]]\nname = \"web\"\ndevice = \"eth0\"\negress = \"100mbit\"\n"
                + "[[namespace.class]]\nname = \"a\"\nrate = \"10mbit\"\n", file: "p.toml")
        let k = fake()
        let engine = Engine(kernel: k)
        let plan = PlanJSON(policy: "/p.toml", plan: try engine.plan(policy, policyPath: "/p.toml"))
        #expect(plan.namespaces.first?.classes.map(\.path) == ["net_cls", "unmatched traffic"])
        _ = try engine.apply(policy, policyPath: "/p.toml")
        let status = try engine.status(policy, interval: 0, sleep: { _ in })
        #expect(status.namespaces.first?.classes.map(\.path) == ["net_cls", "unmatched traffic"])
    }

    /// `status` lists a path class's members: the processes at and below its paths, minus those the
    /// kernel sends elsewhere first (a net_cls classid, a socket priority from sock_create).
    @Test func statusListsThePidsOfPathClasses() throws {
        let policy = try PolicyParser.parse(Self.allPaths, file: "p.toml")
        let k = fake()
        let engine = Engine(kernel: k)
        _ = try engine.apply(policy, policyPath: "/p.toml")
        let web = try #require(k.namespaces["web"]?.netnsID)
        k.cgroup2Procs = [
            "system.slice/backup.service": [300, 301, 302], "system.slice/backup.service/sub": [303],
            "jobs.slice": [400], "system.slice": [500],
        ]
        k.makeCgroup2("system.slice/backup.service/sub")
        func proc(_ comm: String, netCls: TCHandle = .unspecified) -> ObservedCgroup2Members.Process {
            .init(comm: comm, uid: 0, gid: 0, netnsID: web, netClsClassid: netCls)
        }
        let tool = try #require(
            try engine.plan(policy, policyPath: "/p.toml").desired.namespace("web")?.classes.first { $0.name == "tool" }
        )
        k.cgroup2Processes = [
            300: proc("restic"), 301: proc("restic", netCls: tool.spec.classid), 302: proc("nginx"),
            303: proc("tar"), 400: proc("cron"), 500: proc("systemd"),
        ]
        let status = try engine.status(policy, interval: 0, sleep: { _ in })
        func pids(_ ns: String, _ c: String) -> [Int32]? {
            status.namespaces.first { $0.name == ns }?.classes.first { $0.name == c }?.pids
        }
        // 301 is in the tool class through net_cls, 302's sockets go to front (sock_create, earlier).
        #expect(pids("web", "backup") == [300, 303])
        #expect(pids("db", "jobs") == [400])
        #expect(pids("web", "manual") == [])
        let rendered = Render.status(status)
        #expect(
            rendered.split(separator: "\n").contains { $0.contains("backup") && $0.hasSuffix("  300,303") },
            "\(rendered)")
        let json = try encodeJSON(status)
        #expect(json.contains("\"pids\" : [\n            300,\n            303\n          ]"), "\(json)")
    }

    /// `run` into a path class: the one applied directory, else a refusal naming the concrete
    /// directory and the shell line that does it by hand.
    @Test func runEntersTheOneAppliedDirectoryOrSaysHowToByHand() throws {
        let text = Self.allPaths.replacingOccurrences(
            of: "match.cgroup = [\"jobs.slice\"]", with: "match.cgroup = [\"jobs.slice\", \"batch.slice\"]"
        ).replacingOccurrences(
            of: "name = \"manual\"\nrate = \"10mbit\"",
            with: "name = \"manual\"\nrate = \"10mbit\"\n[[namespace.class]]\nname = \"inner\"\nrate = \"1mbit\"\n"
                + "match.cgroup = [\"system.slice/backup.service/x\"]")
        let policy = try PolicyParser.parse(text, file: "p.toml")
        let k = fake()
        let engine = Engine(kernel: k)
        func entry(_ ns: String, _ cls: String) throws -> Result<(mount: String, path: String, id: UInt64), CLIError> {
            let plan = try engine.plan(policy, policyPath: "/p.toml")
            let d = try #require(plan.desired.namespace(ns))
            let c = try #require(d.classes.first { $0.name == cls })
            return PathClassEntry.directory(c, in: d, observed: plan.observed, policyPath: "/p.toml")
        }
        func refusal(_ r: Result<(mount: String, path: String, id: UInt64), CLIError>) -> String {
            if case .failure(let e) = r { return e.message }
            return "entered"
        }
        // Before apply the directory is not mapped: nothing would shape the command.
        #expect(refusal(try entry("web", "backup")).contains("run netshape apply /p.toml first"))
        _ = try engine.apply(policy, policyPath: "/p.toml")
        let ok = try entry("web", "backup").get()
        #expect(ok.mount == "/sys/fs/cgroup" && ok.path == "system.slice/backup.service")
        // Two paths: which one is the operator's call; each is printed as a command.
        let two = refusal(try entry("db", "jobs"))
        #expect(two.contains("2 cgroup v2 paths"), "\(two)")
        #expect(
            two.contains("sh -c 'echo $$ > /sys/fs/cgroup/jobs.slice/cgroup.procs && exec \"$@\"' sh ip netns exec db")
                && two.contains("/sys/fs/cgroup/batch.slice/cgroup.procs"), "\(two)")
        // A path inside an earlier class's path is that class's.
        #expect(refusal(try entry("web", "inner")).contains("inside class backup's path"))
        // A directory that is gone.
        k.removeCgroup2("system.slice/backup.service")
        let gone = refusal(try entry("web", "backup"))
        #expect(gone.contains("/sys/fs/cgroup/system.slice/backup.service does not exist"), "\(gone)")
        #expect(gone.contains("echo $$ > /sys/fs/cgroup/system.slice/backup.service/cgroup.procs"), "\(gone)")
    }
}
