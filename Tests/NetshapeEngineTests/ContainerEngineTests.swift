import NetshapeCore
import NetshapeEngine
import NetshapePolicy
import NetshapeTestSupport
import Testing

/// A fake machine with container runtimes: the fake kernel plus a list of running containers.
final class ContainerKernel: KernelPort {
    let fake: FakeKernel
    var running: [ContainerInfo] = []
    /// dockerd down: listing fails.
    var runtimeDown = false
    init(_ fake: FakeKernel) { self.fake = fake }
    func capabilities() throws -> KernelCapabilities { try fake.capabilities() }
    func observe(_ request: ObservationRequest) throws -> ObservedState { try fake.observe(request) }
    func execute(_ operation: Operation) throws { try fake.execute(operation) }
    func saveOwnership(_ record: OwnershipRecord) throws { try fake.saveOwnership(record) }
    func loadOwnership() throws -> OwnershipRecord { try fake.loadOwnership() }
    func containers(matching selector: ContainerSelector) throws -> [ContainerInfo] {
        if runtimeDown { throw FakeKernelError(errno: 2, "cannot reach Docker at /var/run/docker.sock") }
        return running.filter { $0.runtime == selector.runtime && selector.matches($0.labels) }
    }
}

@Suite struct ContainerEngineTests {
    let selectorPolicy = """
        version = 1
        [[namespace]]
        name = "batch"
        containers = "docker:label=tier=batch"
        egress = "8mbit"
        [[namespace.class]]
        name = "bulk"
        rate = "1mbit"
        """

    func container(_ hex: Character) -> ContainerInfo {
        ContainerInfo(
            runtime: .docker, id: String(repeating: hex, count: 64), name: "c\(hex)", labels: ["tier": "batch"])
    }

    @Test func instancesFollowTheContainersAndAGoneOneLeavesNothing() throws {
        let fake = FakeKernel()
        let k = ContainerKernel(fake)
        let engine = Engine(kernel: k)
        let p = try PolicyParser.parse(selectorPolicy, file: "t.toml")
        let a = "batch-aaaaaaaaaaaa"
        let b = "batch-bbbbbbbbbbbb"
        // The fake resolves targets by the policy namespace's name.
        fake.addNamespace(a)
        fake.addNamespace(b)
        k.running = [container("a")]
        _ = try engine.apply(p, policyPath: "/p.toml")
        #expect(fake.ownership.namespaces.keys.sorted() == [a])
        #expect(fake.cgroups.keys.contains("netshape/\(a)/bulk"))

        k.running = [container("a"), container("b")]
        _ = try engine.apply(p, policyPath: "/p.toml")
        #expect(fake.ownership.namespaces.keys.sorted() == [a, b])

        // a's container is gone (and its namespace with it).
        k.running = [container("b")]
        fake.namespaces[a] = nil
        let r = try engine.apply(p, policyPath: "/p.toml")
        #expect(fake.ownership.namespaces.keys.sorted() == [b])
        #expect(!fake.cgroups.keys.contains { $0.hasPrefix("netshape/\(a)") })
        #expect(fake.cgroups.keys.contains("netshape/\(b)/bulk"))
        #expect(r.notes.contains { $0.contains("namespace \(a) is no longer in the policy") })

        // reset finds the instances in the record.
        _ = try engine.reset(policyPath: "/p.toml", policy: p)
        #expect(fake.ownership.namespaces.isEmpty)
        #expect(!fake.cgroups.keys.contains { $0.hasPrefix("netshape/batch-") })
    }

    @Test func anUnreachableRuntimeLeavesInstancesAndTheRestOfThePolicyApplies() throws {
        let fake = FakeKernel()
        let k = ContainerKernel(fake)
        let engine = Engine(kernel: k)
        let p = try PolicyParser.parse(
            selectorPolicy + "\n[[namespace]]\nname = \"web\"\ndevice = \"eth0\"\negress = \"20mbit\"\n", file: "t.toml"
        )
        let a = "batch-aaaaaaaaaaaa"
        fake.addNamespace(a)
        fake.addNamespace("web")
        k.running = [container("a")]
        _ = try engine.apply(p, policyPath: "/p.toml")
        #expect(fake.ownership.namespaces.keys.sorted() == [a, "web"])
        k.runtimeDown = true
        fake.ownership.namespaces["web"] = nil
        fake.namespaces["web"] = nil
        fake.addNamespace("web")
        _ = try engine.apply(p, policyPath: "/p.toml")
        #expect(fake.ownership.namespaces.keys.sorted() == [a, "web"], "web applied again, a's instance kept")
        #expect(fake.cgroups.keys.contains("netshape/\(a)/bulk"))
    }

    /// `--net=container:X`: a second entry on a namespace another entry shapes is refused, naming it,
    /// even with --force (issue 12, case 8).
    @Test func aSharedNamespaceNamesTheOtherEntry() throws {
        let fake = FakeKernel()
        let engine = Engine(kernel: fake)
        fake.addNamespace("web")
        let web = try PolicyParser.parse(
            "version = 1\n[[namespace]]\nname = \"web\"\nnetns = \"docker:web\"\negress = \"20mbit\"\n", file: "w.toml")
        _ = try engine.apply(web, policyPath: "/etc/netshape/web.toml")
        fake.namespaces["side"] = fake.namespaces["web"]
        let side = try PolicyParser.parse(
            "version = 1\n[[namespace]]\nname = \"side\"\nnetns = \"docker:side\"\negress = \"5mbit\"\n", file: "s.toml"
        )
        let before = fake.log.count
        do {
            _ = try engine.apply(side, policyPath: "/etc/netshape/side.toml", options: ApplyOptions(force: true))
            Issue.record("a second tree on a shared namespace was applied")
        } catch {
            #expect("\(error)".contains("already shaped by namespace web of /etc/netshape/web.toml"))
            #expect("\(error)".contains("not even with --force"))
        }
        #expect(fake.log.count == before, "nothing changed")
    }
}
