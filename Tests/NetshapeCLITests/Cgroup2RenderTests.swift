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
}
