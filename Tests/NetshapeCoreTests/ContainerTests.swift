import NetshapeCore
import Testing

/// `containers` entries expand into one namespace per matching container (issue 12, "Selectors").
@Suite struct ContainerExpansionTests {
    let selector = ContainerSelector(runtime: .docker, labels: ["tier": "batch", "team": nil])
    var template: Policy {
        Policy(
            namespaces: [
                NamespacePolicy(name: "web", netns: .docker("web"), egress: .mbit(20)),
                NamespacePolicy(
                    name: "batch", netns: .docker(selector.description), egress: .mbit(8),
                    classes: [ClassPolicy(name: "bulk", rate: .mbit(1))], containers: selector),
            ], source: "/etc/netshape/p.toml")
    }
    func container(_ id: String, _ labels: [String: String], runtime: ContainerRuntimeKind = .docker)
        -> ContainerInfo
    {
        ContainerInfo(
            runtime: runtime, id: id + String(repeating: "0", count: 64 - id.count), name: "c-\(id)", labels: labels)
    }

    @Test func everyMatchingContainerIsItsOwnInstanceInIdOrder() {
        let b = container("bbbbbbbbbbbbbbbb", ["tier": "batch", "team": "x"])
        let a = container("aaaaaaaaaaaaaaaa", ["tier": "batch", "team": "y", "other": "1"])
        let wrongValue = container("cccccccccccc", ["tier": "web", "team": "x"])
        let missingKey = container("dddddddddddd", ["tier": "batch"])
        let podman = container("eeeeeeeeeeee", ["tier": "batch", "team": "x"], runtime: .podman)
        let p = template.expandingContainers([selector: [b, wrongValue, a, missingKey, podman]])
        #expect(p.namespaces.map(\.name) == ["web", "batch-aaaaaaaaaaaa", "batch-bbbbbbbbbbbb"])
        let i = p.namespaces[1]
        #expect(i.netns == .docker(a.id))
        #expect(i.containers == nil)
        #expect(i.instanceOf == ContainerInstance(entry: "batch", container: a))
        #expect(i.egress == .mbit(8) && i.classes.map(\.name) == ["bulk"])
        #expect(p.containerSelectors.isEmpty)
    }

    @Test func noContainersNoInstancesAndOtherEntriesStay() {
        #expect(template.expandingContainers([:]).namespaces.map(\.name) == ["web"])
        #expect(template.containerSelectors == [selector])
    }

    @Test func instanceNamesFitTheNameCharset() {
        var t = template
        t.namespaces[1].name = String(repeating: "n", count: containerEntryNameLimit)
        let p = t.expandingContainers([selector: [container("ABCDEF0123456789", ["tier": "batch", "team": ""])]])
        let name = p.namespaces[1].name
        #expect(name.count == 32)
        #expect(name.hasSuffix("-abcdef012345"))
    }

    @Test func goneInstancesAreThoseRecordedForThisPolicyOnly() {
        let a = container("aaaaaaaaaaaaaaaa", ["tier": "batch", "team": "x"])
        let expanded = template.expandingContainers([selector: [a]])
        let record = OwnershipRecord(namespaces: [
            "batch-aaaaaaaaaaaa": .init(policy: "/etc/netshape/p.toml"),
            "batch-0123456789ab": .init(policy: "/etc/netshape/p.toml"),
            "batch-fedcba987654": .init(policy: "/etc/netshape/other.toml"),
            "batch-notanidatall": .init(policy: "/etc/netshape/p.toml"),
            "web": .init(policy: "/etc/netshape/p.toml"),
        ])
        let gone = template.goneInstances(expanded, record: record, policyPath: "/etc/netshape/p.toml")
        #expect(gone.map(\.name) == ["batch-0123456789ab"])
        #expect(gone.first?.netns == .docker("0123456789ab"))
        #expect(gone.first?.classes.map(\.name) == ["bulk"])
        let any = template.goneInstances(expanded, record: record, policyPath: nil)
        #expect(any.map(\.name) == ["batch-0123456789ab", "batch-fedcba987654"])
    }

    @Test func containerTargetsHaveNoStaticPath() {
        #expect(NetnsTarget.docker("web").path == nil)
        #expect(NetnsTarget.podman("db").container?.runtime == .podman)
        #expect(NetnsTarget.docker("web").description == "docker:web")
        #expect(selector.description == "docker:label=team,label=tier=batch")
        #expect(selector.filterTerms == ["team", "tier=batch"])
    }
}
