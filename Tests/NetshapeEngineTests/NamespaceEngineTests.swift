import NetshapeCore
import NetshapeEngine
import NetshapePolicy
import NetshapeTestSupport
import Testing

let ingressPolicy = """
    version = 1
    [[namespace]]
    name = "web"
    device = "eth0"
    egress = "100mbit"
    ingress = "40mbit"
    """

@Suite struct IngressAndProvisionTests {
    @Test func ingressGoesOnTheHostSideVethPeer() throws {
        let k = FakeKernel()
        k.addNamespace("web", peer: "veth-web")
        let engine = Engine(kernel: k)
        let report = try engine.apply(try load(ingressPolicy), policyPath: "/p")
        #expect(report.remaining.isEmpty)
        let peer = try #require(k.hostDevices["veth-web"])
        #expect(peer.classes.map(\.spec.rate) == [.mbit(40)])
        #expect(peer.qdiscs.first { $0.parent == .root }?.kind == "htb")
        #expect(!report.performed.contains { if case .createIFB = $0.action { true } else { false } }, "no IFB needed")
        #expect(k.ownership.namespaces["web"]?.ingress?.tree?.device == "veth-web")
        #expect(try engine.apply(try load(ingressPolicy), policyPath: "/p").performed.isEmpty, "idempotent")

        let edited = try engine.apply(
            try load(ingressPolicy.replacingOccurrences(of: "\"40mbit\"", with: "\"25mbit\"")), policyPath: "/p")
        #expect(edited.performed.map { "\($0.verb) \($0.object) \($0.link)" } == ["change class ingress"])

        _ = try engine.reset(policyPath: "/p", policy: try load(ingressPolicy))
        #expect(k.hostDevices["veth-web"]?.qdiscs.first?.kind == "noqueue", "reset restores the peer's default qdisc")
        #expect(k.ownership.namespaces["web"] == nil)
    }

    @Test func withoutAPeerIngressUsesAnIFB() throws {
        let k = FakeKernel()
        k.addNamespace("web")
        let engine = Engine(kernel: k)
        let report = try engine.apply(try load(ingressPolicy), policyPath: "/p")
        #expect(report.remaining.isEmpty, "\(report.remaining.map(\.command))")
        let kinds = report.performed.map { "\($0.verb) \($0.object)" }
        #expect(kinds.contains("create link") && kinds.contains("add redirect"))
        let ifb = try #require(k.namespaces["web"]?.links.first)
        #expect(k.hostDevices["web/\(ifb)"]?.classes.map(\.spec.rate) == [.mbit(40)])
        #expect(try engine.apply(try load(ingressPolicy), policyPath: "/p").performed.isEmpty)
        _ = try engine.reset(policyPath: "/p", policy: try load(ingressPolicy))
        #expect(k.namespaces["web"]?.links.isEmpty == true)
        #expect(k.namespaces["web"]?.ingressQdisc == false)
    }

    @Test func removingIngressFromThePolicyRemovesItsShaping() throws {
        for peer in [true, false] {
            let k = FakeKernel()
            k.addNamespace("web", peer: peer ? "veth-web" : nil)
            let engine = Engine(kernel: k)
            try engine.apply(try load(ingressPolicy), policyPath: "/p")
            let report = try engine.apply(
                try load(ingressPolicy.replacingOccurrences(of: "ingress = \"40mbit\"", with: "")), policyPath: "/p")
            #expect(report.remaining.isEmpty)
            if peer {
                #expect(k.hostDevices["veth-web"]?.qdiscs.first?.kind == "noqueue")
            } else {
                #expect(k.namespaces["web"]?.links.isEmpty == true, "the IFB is gone")
                #expect(k.namespaces["web"]?.ingressQdisc == false, "the redirect is gone")
            }
            #expect(k.ownership.namespaces["web"]?.ingress?.tree == nil)
        }
    }

    @Test func aForeignIngressQdiscIsRefused() throws {
        let k = FakeKernel()
        k.addNamespace("web")
        k.namespaces["web"]?.ingressQdisc = true
        let before = k.namespaces["web"]?.links
        #expect(throws: DiffError.self) { try Engine(kernel: k).apply(try load(ingressPolicy), policyPath: "/p") }
        #expect(k.namespaces["web"]?.links == before)
    }

    static let provisioned = """
        version = 1
        [[namespace]]
        name = "a"
        egress = "10mbit"
        ingress = "5mbit"
        [namespace.provision]
        address = "198.18.20.2/24"
        bridge = "nsbr0"
        gateway = "198.18.20.1"
        [[namespace]]
        name = "b"
        egress = "20mbit"
        [namespace.provision]
        address = "198.18.20.3/24"
        bridge = "nsbr0"
        """

    @Test func provisionCreatesOnceAndResetRemovesExactlyThat() throws {
        let k = FakeKernel()
        let engine = Engine(kernel: k)
        let p = try load(Self.provisioned)
        let plan = try engine.plan(p)
        #expect(
            plan.operations.filter { if case .createBridge = $0.action { true } else { false } }.count == 1,
            "one bridge for both namespaces")
        let report = try engine.apply(p, policyPath: "/p")
        #expect(report.remaining.isEmpty, "\(report.remaining.map(\.command))")
        #expect(k.namespaces.keys.sorted() == ["a", "b"])
        #expect(k.hostLinks == ["nsbr0"])
        #expect(k.hostDevices["ns-a"]?.classes.map(\.spec.rate) == [.mbit(5)], "ingress on the provisioned peer")
        #expect(
            k.ownership.namespaces["a"]?.provisioned
                == OwnershipRecord.Provisioned(netns: "a", hostDevice: "ns-a", bridge: "nsbr0"))
        #expect(try engine.apply(p, policyPath: "/p").performed.isEmpty, "a second apply provisions nothing")
        _ = try engine.reset(policyPath: "/p", policy: p)
        #expect(k.namespaces.isEmpty)
        #expect(k.hostLinks.isEmpty, "the bridge netshape created goes with its last namespace")
        #expect(k.ownership.namespaces.isEmpty)
    }

    @Test func anExistingForeignNamespaceIsNeverProvisioned() throws {
        let k = FakeKernel()
        k.addNamespace("a")
        k.addNamespace("b")
        let plan = try Engine(kernel: k).plan(
            try load(Self.provisioned.replacingOccurrences(of: "ingress = \"5mbit\"\n", with: "")))
        #expect(!plan.operations.contains { $0.isProvisioning })
        #expect(plan.desired.notes.contains { $0.contains("was not created by netshape") })
    }

    @Test func aFailedProvisioningRollsBack() throws {
        let k = FakeKernel()
        k.failWhen = { op in
            if case .addDefaultRoute = op.action { FakeKernelError(errno: 101, "ENETUNREACH") } else { nil }
        }
        #expect(throws: ApplyError.self) { try Engine(kernel: k).apply(try load(Self.provisioned), policyPath: "/p") }
        #expect(k.namespaces.isEmpty)
        #expect(k.hostLinks.isEmpty)
        #expect(k.ownership.namespaces.isEmpty)
    }
}
