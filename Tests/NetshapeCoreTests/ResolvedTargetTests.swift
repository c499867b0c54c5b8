import NetshapeCore
import Testing

/// Operations carry where they act from the observation they were planned from, so the kernel
/// port needs nothing it remembered of that observation.
@Suite struct ResolvedTargetTests {
    let path = NetnsTarget.path("/run/docker/netns/abc")

    func observed(_ placement: ObservedIngress.Placement) -> ObservedState {
        var s = ObservedState(ownership: OwnershipRecord())
        let ingress =
            placement == .peer
            ? ObservedIngress(placement: .peer, device: "veth12", netnsID: "1:1", ifindex: 31)
            : ObservedIngress(placement: .ifb, device: "nsifb1", netnsID: "1:2", ifindex: 0)
        s.namespaces["db"] = ObservedNamespace(
            name: "db", netnsID: "1:2", device: "eth0", ifindex: 7, ingress: ingress, target: path)
        return s
    }

    func op(_ device: String, _ a: Operation.Action, link: Operation.Link = .namespace) -> Operation {
        Operation(namespace: "db", device: device, link: link, action: a)
    }

    let leaf = LeafQdiscSpec(parent: TCHandle(major: 1, minor: 2), queue: .bfifo(limit: 1000))

    @Test func deviceOperationsGetTheResolvedNamespaceAndIfindex() {
        let s = observed(.ifb)
        #expect(op("eth0", .addLeaf(leaf)).resolved(in: s).target == ResolvedTarget(netns: path, ifindex: 7))
        // The IFB does not exist yet: same namespace, looked up by name when it does.
        #expect(op("nsifb1", .createIFB("nsifb1")).resolved(in: s).target == ResolvedTarget(netns: path, ifindex: 0))
        #expect(
            op("nsifb1", .addLeaf(leaf), link: .ingress).resolved(in: s).target
                == ResolvedTarget(netns: path, ifindex: 0))
    }

    @Test func ingressOnTheVethPeerActsInTheHost() {
        let r = op("veth12", .addLeaf(leaf), link: .ingress).resolved(in: observed(.peer))
        #expect(r.target == ResolvedTarget(netns: .host, ifindex: 31))
        #expect(r.inverse.target == r.target, "a rollback acts where the operation did")
    }

    @Test func cgroupProvisioningAndUnobservedOperationsStayByName() {
        let s = observed(.ifb)
        #expect(op("", .createCgroup(path: "netshape/db", classid: .unspecified)).resolved(in: s).target == nil)
        #expect(op("eth0", .linkUp, link: .host).resolved(in: s).target == nil)
        let other = Operation(namespace: "web", device: "eth0", action: .addLeaf(leaf))
        #expect(other.resolved(in: s).target == nil)
        var already = op("eth0", .addLeaf(leaf))
        already.target = ResolvedTarget(netns: .host, ifindex: 2)
        #expect(already.resolved(in: s).target == already.target, "a target once set is kept")
    }
}
