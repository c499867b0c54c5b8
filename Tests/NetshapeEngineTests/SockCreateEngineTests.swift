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
        // Before apply nothing serves a class (plan says what apply will make it).
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

    /// `web` without rules beside `db` with a comm rule, or `web` with its rules alone (`db` dropped).
    static let twoEntries = """
        version = 1
        [[namespace]]
        name = "web"
        device = "eth0"
        egress = "100mbit"
        [[namespace.class]]
        name = "other"
        rate = "10mbit"

        """ + dbEntry

    /// `db` with its comm rule, as both policies here have it.
    static let dbEntry = """
        [[namespace]]
        name = "db"
        device = "eth0"
        egress = "100mbit"
        default = "rest"
        [[namespace.class]]
        name = "replication"
        rate = "10mbit"
        match.comm = ["postgres"]
        [[namespace.class]]
        name = "rest"
        rate = "10mbit"
        """

    func twoNamespaces() -> FakeKernel {
        let k = machine(Self.caps)
        k.addNamespace("db", processes: [ProcessInfo(pid: 200, comm: "postgres", exe: "/usr/bin/postgres")])
        return k
    }

    @Test func anEntryDroppedWhileAnotherGainsRulesLeavesTheProgramServingThem() throws {
        let k = twoNamespaces()
        let engine = Engine(kernel: k)
        _ = try engine.apply(try load(Self.twoEntries), policyPath: Self.path)
        #expect(k.sockCreateAttached && k.sockCreateMap.count == 1)
        // One edit: db's entry goes (its rule with it) and web's rules come (the sample policy).
        let r = try engine.apply(try load(webPolicy), policyPath: Self.path)
        #expect(r.remaining.isEmpty, "converged: \(r.remaining.map(\.command))")
        #expect(k.sockCreateAttached, "the program serves web's new rules: \(sockOps(r.performed))")
        let frontend = try #require(r.state?.desired.namespace("web")?.classes.first { $0.name == "frontend" })
        #expect(k.sockCreateVerdict(namespace: "web", comm: "nginx") == frontend.spec.classid)
        #expect(k.sockCreateVerdict(namespace: "db", comm: "postgres") == nil, "db's rule went with its entry")
        #expect(try engine.plan(try load(webPolicy), policyPath: Self.path).operations.isEmpty)
        #expect(k.ownership.namespaces["db"] == nil)
    }

    @Test func aResetLeavesTheProgramToTheRulesOfAnotherRecord() throws {
        // Two state directories (a test's and the host's) share the one program on the cgroup2 root.
        let k = twoNamespaces()
        _ = try Engine(kernel: k).apply(try load(webPolicy), policyPath: Self.path)
        let first = k.ownership
        #expect(first.sockCreate == true)
        k.ownership = OwnershipRecord()
        let db = Self.twoEntries.replacingOccurrences(of: "name = \"web\"", with: "name = \"spare\"")
        k.addNamespace("spare")
        _ = try Engine(kernel: k).apply(try load(db), policyPath: "/etc/netshape/db.toml")
        let second = k.ownership
        let replication = try #require(k.sockCreateVerdict(namespace: "db", comm: "postgres"))
        k.ownership = first
        let reset = try Engine(kernel: k).reset(policyPath: Self.path, policy: nil)
        #expect(!reset.performed.contains { $0.action == .detachSockCreate }, "\(sockOps(reset.performed))")
        #expect(k.sockCreateAttached && k.sockCreateVerdict(namespace: "db", comm: "postgres") == replication)
        #expect(k.sockCreateVerdict(namespace: "web", comm: "nginx") == nil)
        // The last rules to go take the program with them, whichever record attached it.
        k.ownership = second
        _ = try Engine(kernel: k).reset(policyPath: "/etc/netshape/db.toml", policy: nil)
        #expect(!k.sockCreateAttached && k.sockCreateMap.isEmpty)
    }

    @Test func rulesThatDoNotFitBesideOtherNamespacesGoToTheDaemonInsteadOfFailingApply() throws {
        // Each namespace's table fits the map alone (130 × 70 = 9100 entries); both do not.
        let comms = (0..<130).map { "\"c\($0)\"" }.joined(separator: ", ")
        let uids = (0..<70).map { String(1000 + $0) }.joined(separator: ", ")
        let big = Self.twoEntries.replacingOccurrences(
            of: "match.comm = [\"postgres\"]", with: "match.comm = [\(comms)]\nmatch.user = [\(uids)]")
        let both =
            big
            + big.replacingOccurrences(of: "version = 1", with: "")
            .replacingOccurrences(of: "name = \"web\"", with: "name = \"spare\"")
            .replacingOccurrences(of: "name = \"db\"", with: "name = \"db2\"")
        let k = twoNamespaces()
        k.addNamespace("spare")
        k.addNamespace("db2")
        let r = try Engine(kernel: k).apply(try load(both), policyPath: Self.path)
        #expect(r.remaining.isEmpty)
        #expect(k.sockCreateMap.count == 9100, "db's table in the map, db2's left to the daemon")
        #expect(r.notes.contains { $0.contains("namespace db2") && $0.contains("taken by other namespaces") })
        #expect(k.sockCreateVerdict(namespace: "db", comm: "c7", uid: 1003) != nil)
        #expect(k.sockCreateVerdict(namespace: "db2", comm: "c7", uid: 1003) == nil)
        #expect(try Engine(kernel: k).plan(try load(both), policyPath: Self.path).operations.isEmpty)
    }

    @Test func badSettingIsAPolicyError() {
        #expect(throws: (any Error).self) {
            try load(
                webPolicy.replacingOccurrences(
                    of: "version = 1", with: "version = 1\n[settings]\nsock_create = \"yes\""))
        }
    }
    /// An entry renamed on the same network namespace keeps its rules (nothing else tests that an
    /// owned cookie's rules are converged once, by the entry that owns it now).
    @Test func anEntryRenamedOnItsNamespaceKeepsItsRules() throws {
        let k = machine(Self.caps)
        let engine = Engine(kernel: k)
        _ = try engine.apply(try load(webPolicy), policyPath: Self.path)
        let n = k.sockCreateMap.count
        let renamed = webPolicy.replacingOccurrences(of: "name = \"web\"", with: "name = \"web2\"")
        k.addNamespace("web2")
        let webCookie = try #require(k.namespaces["web"]?.cookie)
        k.namespaces["web2"]?.cookie = webCookie
        let r = try engine.apply(try load(renamed), policyPath: Self.path)
        #expect(r.remaining.isEmpty)
        #expect(k.sockCreateAttached && k.sockCreateMap.count == n, "\(r.performed.map(\.command))")
        #expect(k.sockCreateVerdict(namespace: "web2", comm: "nginx") != nil)
        #expect(try engine.plan(try load(renamed), policyPath: Self.path).operations.isEmpty)
    }

    /// `web` with its own comm rule beside `db`.
    static let bothWithRules = """
        version = 1
        [[namespace]]
        name = "web"
        device = "eth0"
        egress = "100mbit"
        default = "rest"
        [[namespace.class]]
        name = "front"
        rate = "10mbit"
        match.comm = ["nginx"]
        [[namespace.class]]
        name = "rest"
        rate = "10mbit"

        """ + dbEntry
    /// db now lives in the network namespace web had (web in a new one): the old cookie's rules are
    /// converged once, by db, which owns it now (deleting them twice failed every apply with ENOENT).
    @Test func anEntryMovingOntoTheNamespaceAnotherLeftTakesItsCookie() throws {
        let k = machine(Self.caps)
        k.addNamespace("db")
        let engine = Engine(kernel: k)
        _ = try engine.apply(try load(Self.bothWithRules), policyPath: Self.path)
        #expect(k.sockCreateMap.count == 2)
        let webCookie = try #require(k.namespaces["web"]?.cookie)
        k.namespaces["db"]?.cookie = webCookie
        k.namespaces["web"]?.cookie = 999
        let r = try engine.apply(try load(Self.bothWithRules), policyPath: Self.path)
        #expect(r.remaining.isEmpty, "\(r.performed.map(\.command))")
        #expect(k.sockCreateVerdict(namespace: "db", comm: "postgres") != nil)
        #expect(k.sockCreateVerdict(namespace: "web", comm: "nginx") != nil)
        #expect(k.sockCreateMap.count == 2)
        #expect(try engine.plan(try load(Self.bothWithRules), policyPath: Self.path).operations.isEmpty)
    }

    /// A table replaced by another of the same size fits: the stale rules go before the new ones
    /// (with both in at once, 9100 + 9100 entries overflowed the 16 384 of the map).
    @Test func aTableReplacedByAnotherOfItsSizeFitsTheMap() throws {
        func big(_ prefix: String) -> String {
            let comms = (0..<130).map { "\"\(prefix)\($0)\"" }.joined(separator: ", ")
            let uids = (0..<70).map { String(1000 + $0) }.joined(separator: ", ")
            return
                "version = 1\n[[namespace]]\nname = \"web\"\ndevice = \"eth0\"\negress = \"100mbit\"\ndefault = \"rest\"\n"
                + "[[namespace.class]]\nname = \"big\"\nrate = \"5mbit\"\nmatch.comm = [\(comms)]\nmatch.user = [\(uids)]\n"
                + "[[namespace.class]]\nname = \"rest\"\nrate = \"5mbit\"\n"
        }
        let k = machine(Self.caps)
        let engine = Engine(kernel: k)
        _ = try engine.apply(try load(big("c")), policyPath: Self.path)
        #expect(k.sockCreateMap.count == 9100)
        let r = try engine.apply(try load(big("d")), policyPath: Self.path)
        #expect(r.remaining.isEmpty && k.sockCreateMap.count == 9100)
        #expect(
            k.sockCreateVerdict(namespace: "web", comm: "d7", uid: 1007) != nil
                && k.sockCreateVerdict(namespace: "web", comm: "c7", uid: 1007) == nil)
    }
    /// A reset killed after its detach but before it saved the record left `sockCreate` set; the
    /// next reset finds nothing attached and clears it.
    @Test func aResetInterruptedAfterItsDetachIsFinishedByTheNext() throws {
        let k = machine(Self.caps)
        let engine = Engine(kernel: k)
        _ = try engine.apply(try load(webPolicy), policyPath: Self.path)
        #expect(k.ownership.sockCreate == true)
        k.sockCreateAttached = false  // detached, and the map with it, by the killed reset
        k.sockCreateMap = [:]
        _ = try engine.reset(policyPath: Self.path, policy: try load(webPolicy))
        #expect(k.ownership.sockCreate == nil && k.ownership.namespaces.isEmpty)
    }
}
