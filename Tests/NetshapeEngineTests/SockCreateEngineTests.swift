import NetshapeCore
import NetshapeEngine
import NetshapePolicy
import NetshapeTestSupport
import Testing

/// The sock_create program and map as the engine keeps them, against the fake kernel.
@Suite struct SockCreateEngineTests {
    static let caps = KernelCapabilities(clsCgroup: true, clsBpf: true, fqCodel: true, sfq: true, sockCreate: true)
    static let path = "/etc/netshape/web.toml"

    func sockOps(_ ops: [Operation]) -> [String] { ops.filter { $0.object == "sockcreate" }.map(\.command) }

    @Test func applyAttachesOnceEditsUpdateInPlaceResetDetaches() throws {
        let k = machine(Self.caps)
        let engine = Engine(kernel: k)
        // Before apply nothing serves a class; the path plan prints is what apply will make it.
        let before = try engine.status(try load(webPolicy), interval: 0, sleep: { _ in })
        #expect(before.namespaces[0].classes.map(\.path) == Array(repeating: ClassStatus.notApplied, count: 3))
        let r = try engine.apply(try load(webPolicy), policyPath: Self.path)
        #expect(r.remaining.isEmpty)
        #expect(sockOps(r.performed).count == 3, "attach + nginx + backup's uid: \(sockOps(r.performed))")
        #expect(k.sockCreateAttached)
        let cookie = try #require(k.namespaces["web"]?.cookie)
        #expect(k.ownership.sockCreate == true && k.ownership.namespaces["web"]?.sockCookie == cookie)
        let frontend = try #require(r.state?.desired.namespace("web")?.classes.first { $0.name == "frontend" })
        #expect(k.sockCreateVerdict(namespace: "web", comm: "nginx") == frontend.spec.classid)
        #expect(k.sockCreateVerdict(namespace: "web", comm: "bash") == nil)

        #expect(try engine.apply(try load(webPolicy), policyPath: Self.path).performed.isEmpty)

        let edited = webPolicy.replacingOccurrences(of: "[\"nginx\"]", with: "[\"nginx\", \"caddy\"]")
        let e = try engine.apply(try load(edited), policyPath: Self.path)
        #expect(e.performed.map(\.command) == sockOps(e.performed), "only the map changes: \(e.performed)")
        #expect(e.performed.count == 1 && e.performed[0].verb == "add")
        #expect(k.sockCreateVerdict(namespace: "web", comm: "caddy") == frontend.spec.classid)

        // The status names the path of each class.
        let st = try engine.status(try load(edited), interval: 0, sleep: { _ in })
        let paths = Dictionary(uniqueKeysWithValues: st.namespaces[0].classes.map { ($0.name, $0.path) })
        #expect(paths == ["frontend": "sock_create", "backup": "sock_create", "other": "net_cls"])

        let reset = try engine.reset(policyPath: Self.path, policy: try load(edited))
        #expect(sockOps(reset.performed).last?.contains("detach") == true)
        #expect(!k.sockCreateAttached && k.sockCreateMap.isEmpty)
        #expect(k.ownership.sockCreate == nil && k.ownership.namespaces.isEmpty)
    }

    @Test func aReplacedNamespaceMovesItsRulesToTheNewCookie() throws {
        let k = machine(Self.caps)
        let engine = Engine(kernel: k)
        _ = try engine.apply(try load(webPolicy), policyPath: Self.path)
        let old = try #require(k.namespaces["web"]?.cookie)
        k.namespaces["web"]?.cookie = old + 1000  // ip netns del + add: a new namespace, a new cookie
        let r = try engine.apply(try load(webPolicy), policyPath: Self.path)
        #expect(r.remaining.isEmpty)
        #expect(k.sockCreateMap.keys.allSatisfy { $0.cookie == old + 1000 } && k.sockCreateMap.count == 2)
        #expect(!r.performed.contains { $0.action == .attachSockCreate || $0.action == .detachSockCreate })
        #expect(k.ownership.namespaces["web"]?.sockCookie == old + 1000)
    }

    @Test func anExeClassFirstDefersAndOffOrNoHookUsesTheDaemonOnly() throws {
        let exeFirst = webPolicy.replacingOccurrences(
            of: "[[namespace.class]]\nname = \"frontend\"",
            with: "[[namespace.class]]\nname = \"tools\"\nrate = \"1mbit\"\nmatch.exe = [\"/usr/sbin/nginx\"]\n\n"
                + "[[namespace.class]]\nname = \"frontend\"")
        let k = machine(Self.caps)
        let r = try Engine(kernel: k).apply(try load(exeFirst), policyPath: Self.path)
        #expect(k.sockCreateVerdict(namespace: "web", comm: "nginx") == .unspecified)
        // The daemon path put nginx in "tools", where its exe says it belongs.
        let tools = try #require(r.state?.desired.namespace("web")?.classes.first { $0.name == "tools" })
        #expect(k.cgroups.values.first { $0.pids.contains(100) }?.classid == tools.spec.classid)

        let off = machine(Self.caps)
        _ = try Engine(kernel: off).apply(
            try load(
                webPolicy.replacingOccurrences(
                    of: "version = 1", with: "version = 1\n[settings]\nsock_create = \"off\"")),
            policyPath: Self.path)
        #expect(!off.sockCreateAttached && off.sockCreateMap.isEmpty)

        let old = machine(.minimal)
        let plan = try Engine(kernel: old).plan(try load(webPolicy), policyPath: Self.path)
        #expect(sockOps(plan.operations).isEmpty)
    }

    @Test func badSettingIsAPolicyError() {
        #expect(throws: (any Error).self) {
            try load(
                webPolicy.replacingOccurrences(
                    of: "version = 1", with: "version = 1\n[settings]\nsock_create = \"yes\""))
        }
    }
}
