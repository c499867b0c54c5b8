import CNetshapeShim
import Glibc
import NetshapeCore
import Testing

@testable import NetshapeKernel

// Golden bytes for every rtnetlink request netshape sends (built by libnl-route, sent through
// `NetlinkTransport`), both as built and as they reach the transport, and every dump netshape
// parses, from the replies captured in RouteCaptures.swift (see there how they were captured).

/// `body` run on a `RouteSocket` over a replay of `exchanges`' replies, in order; what it sent
/// must be their requests, in that order (seq and pid masked).
func replayed<T>(
    _ exchanges: Exchange..., sourceLocation: SourceLocation = #_sourceLocation, _ body: (RouteSocket) throws -> T
) rethrows -> T {
    let t = ReplayTransport(replies: exchanges.flatMap(\.replies).map { .success(hex($0)) })
    let result = try body(RouteSocket(session: NetlinkSession(transport: t, firstSeq: 0), namespace: "test"))
    #expect(t.sent.map(fdMasked) == exchanges.map(captured), sourceLocation: sourceLocation)
    return result
}

/// Replays datagrams with each message's seq set to the request it answers, in order (a batch's
/// replies answer several requests of one datagram).
final class SeqReplayTransport: NetlinkTransport {
    let portID: UInt32 = 4242
    var sent: [[UInt8]] = []
    var replies: [[UInt8]]
    private var seqs: [UInt32] = []
    init(replies: [[UInt8]]) { self.replies = replies }
    func send(_ bytes: [UInt8]) throws {
        sent.append(bytes)
        seqs += try NetlinkMessage.parse(bytes).map(\.seq)
    }
    func receive(timeoutMilliseconds: Int32?) throws -> [NetlinkMessage]? {
        guard !replies.isEmpty, !seqs.isEmpty else {
            throw KernelError(.state, "replay", reason: "the code under test waits for a reply nobody scripted")
        }
        let seq = seqs.removeFirst()
        return try NetlinkMessage.parse(replies.removeFirst()).map { m in
            var m = m
            m.seq = seq
            return m
        }
    }
}

/// seq and pid masked (`masked`), and the program fd of a cls_bpf filter add zeroed: whatever
/// number bpf(BPF_PROG_LOAD) returned in that process. netshape's TCA_BPF_FD is the first option,
/// its u32 at byte 52 (16 nlmsghdr + 20 tcmsg + 8 TCA_KIND "bpf" + 4 TCA_OPTIONS + 4).
func fdMasked(_ bytes: [UInt8]) -> [UInt8] {
    var b = masked(bytes)
    let r = NetlinkReader(b, at: 0)
    if r.u16(4) == UInt16(RTM_NEWTFILTER), b.count >= 56, b[36..<44] == [8, 0, 1, 0, 0x62, 0x70, 0x66, 0],
        r.u16(50) & ~Netlink.nestedFlag == UInt16(TCA_BPF_FD), r.u16(48) == 8
    {
        b.replaceSubrange(52..<56, with: [0, 0, 0, 0])
    }
    return b
}

/// The captured request, seq and pid (and a cls_bpf program fd) masked.
func captured(_ e: Exchange) -> [UInt8] { fdMasked(hex(e.request)) }

/// A request as netshape would send it, seq and pid (and a cls_bpf program fd) masked.
func wire(_ r: NetlinkRequest) -> [UInt8] { fdMasked(r.message.bytes) }

/// The TCA_OPTIONS nest of a tc message, as attribute types.
func optionTypes(_ m: NetlinkMessage) -> [UInt16] {
    NetlinkAttribute.parse(m.payload[TCMessage.size...]).first { $0.type == UInt16(TCA_OPTIONS) }?.attributes.map(
        \.type)
        ?? []
}

@Suite struct RouteGoldenBytesTests {
    let tree = TCHandle(major: 0xB7E, minor: 0)
    let gbit100 = Rate(bytesPerSecond: 12_500_000_000)
    /// The class `other`: 10mbit, ceil 100gbit (above 34 Gbit/s: TCA_HTB_CEIL64 only).
    var other: HTBClassSpec {
        HTBClassSpec(
            classid: TCHandle(major: 0xB7E, minor: 2), parent: TCHandle(major: 0xB7E, minor: 1),
            rate: Rate(bytesPerSecond: 1_250_000), ceil: gbit100, burst: Size(bytes: 65536),
            cburst: Size(bytes: 50_000_000), priority: 4, quantum: 1514)
    }

    /// `request` pinned against `e`, then sent through a replay of `e`'s replies: the captured
    /// answer decodes as an ACK.
    func pinnedAndAcked(
        _ request: NetlinkRequest, _ e: Exchange, sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        #expect(wire(request) == captured(e), "\(request.operation)", sourceLocation: sourceLocation)
        #expect(throws: Never.self, sourceLocation: sourceLocation) {
            try replayed(e, sourceLocation: sourceLocation) { try $0.transact(request) }
        }
    }

    /// `request` pinned against `e`, then sent through a replay of `e`'s replies: the captured
    /// refusal fails it with the kernel's errno and text (`text`; nil where the kernel gave none),
    /// naming `object`.
    func pinnedAndRefused(
        _ request: NetlinkRequest, _ e: Exchange, errno: Int32, text: String?, object: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        #expect(wire(request) == captured(e), "\(request.operation)", sourceLocation: sourceLocation)
        #expect(sourceLocation: sourceLocation) {
            try replayed(e, sourceLocation: sourceLocation) { try $0.transact(request) }
        } throws: { error in
            guard let k = error as? KernelError else { return false }
            return k.errno == errno && k.operation == request.operation && "\(k)".contains(object)
                && k.reason == (text ?? String(cString: strerror(errno)))
        }
    }

    // MARK: - tc: HTB, leaves, classifiers, ingress

    @Test func htbRootQdisc() throws {
        let r = try RouteSocket.htbRoot(.add, ifindex: 2, device: "eth0", HTBQdiscSpec(handle: tree, defaultMinor: 2))
        try pinnedAndAcked(r, RouteCaptures.htbRootAdd)
        #expect(r.operation == "tc qdisc add dev eth0 root handle b7e: htb")
    }

    func bulk(_ rate: UInt64, burst: UInt64) -> HTBClassSpec {
        HTBClassSpec(
            classid: TCHandle(major: 0xB7E, minor: 0xDB3D), parent: TCHandle(major: 0xB7E, minor: 1),
            rate: Rate(bytesPerSecond: rate), ceil: gbit100, burst: Size(bytes: burst),
            cburst: Size(bytes: 50_000_000), priority: 4, quantum: 200_000)
    }

    @Test func htbClassesAbove34GbitCarryRate64AndCeil64() throws {
        let root = HTBClassSpec(
            classid: TCHandle(major: 0xB7E, minor: 1), parent: tree, rate: gbit100, ceil: gbit100,
            burst: Size(bytes: 50_000_000), cburst: Size(bytes: 50_000_000), priority: 0, quantum: 200_000)
        let add = { (c: HTBClassSpec) in try RouteSocket.htbClass(.add, ifindex: 2, device: "eth0", c) }
        try pinnedAndAcked(add(root), RouteCaptures.classAddRoot)
        try pinnedAndAcked(add(bulk(5_000_000_000, burst: 20_000_000)), RouteCaptures.classAddBulk)
        try pinnedAndAcked(add(other), RouteCaptures.classAddOther)
        // tc_ratespec.rate is u32 bytes/s (34.3 Gbit/s at most): above it TCA_HTB_RATE64 (6) and
        // TCA_HTB_CEIL64 (7) carry the rate; parms (1), ctab (4) and rtab (3) are always there.
        #expect(optionTypes(try add(root).message) == [1, 6, 7, 4, 3])
        #expect(optionTypes(try add(other).message) == [1, 7, 4, 3])
    }

    @Test func htbClassChange() throws {
        let r = try RouteSocket.htbClass(.change, ifindex: 2, device: "eth0", bulk(6_250_000_000, burst: 25_000_000))
        try pinnedAndAcked(r, RouteCaptures.classChange)
        #expect(r.message.flags == [.request, .ack], "change: neither CREATE nor EXCL")
    }

    @Test func fifoLeaves() throws {
        let pfifo = LeafQdiscSpec(parent: TCHandle(major: 0xB7E, minor: 0xDB3D), queue: .pfifo(limit: 82562))
        let bfifo = LeafQdiscSpec(parent: TCHandle(major: 0xB7E, minor: 2), queue: .bfifo(limit: 16 << 20))
        let replaced = LeafQdiscSpec(parent: TCHandle(major: 0xB7E, minor: 2), queue: .pfifo(limit: 82562))
        try pinnedAndAcked(RouteSocket.leaf(.add, ifindex: 2, device: "eth0", pfifo), RouteCaptures.leafAddPfifo)
        try pinnedAndAcked(RouteSocket.leaf(.add, ifindex: 2, device: "eth0", bfifo), RouteCaptures.leafAddBfifo)
        try pinnedAndAcked(
            RouteSocket.leaf(.replace, ifindex: 2, device: "eth0", replaced), RouteCaptures.leafReplacePfifo)
    }

    /// The capability probe's leaf on lo of its throwaway namespace…
    func probeLeaf(_ queue: LeafQueue) throws -> NetlinkRequest {
        try RouteSocket.leaf(
            .replace, ifindex: 1, device: "lo", LeafQdiscSpec(parent: TCHandle(major: 1, minor: 1), queue: queue))
    }
    /// …and its cls_cgroup filter.
    var probeCgroup: NetlinkRequest {
        get throws {
            try RouteSocket.cgroupFilter(
                ifindex: 1, device: "lo", FilterSpec(parent: TCHandle(major: 1, minor: 0), kind: .cgroup, priority: 1))
        }
    }

    @Test func fqCodelSfqAndClsCgroupAreRefusedByThisKernel() throws {
        // This kernel has none of them: ENOENT (no such qdisc kind or classifier), kept with the
        // command. The first run's socket asked for no extended ACK, so its refusals carry no text.
        for (request, e) in [
            (try probeLeaf(.fqCodel), RouteCaptures.leafReplaceFqCodel),
            (try probeLeaf(.sfq), RouteCaptures.leafReplaceSfq),
            (try probeCgroup, RouteCaptures.cgroupAdd),
        ] {
            try pinnedAndRefused(request, e, errno: ENOENT, text: nil, object: "dev lo")
        }
        #expect(try probeCgroup.operation == "tc filter add dev lo parent 1: protocol all prio 1 handle 1 cgroup")
    }

    @Test func ingressQdiscAndU32MirredRedirect() throws {
        // The IFB's ifindex (4) comes from a link dump, then the qdisc, then the filter.
        try replayed(RouteCaptures.linkDumpB, RouteCaptures.ingressAdd, RouteCaptures.u32Add) {
            try $0.addIngressRedirect(ifindex: 3, device: "d0", ifb: "nsifb42fc59f7")
        }
        #expect(
            wire(try RouteSocket.redirectFilter(ifindex: 3, device: "d0", ifb: "nsifb42fc59f7", ifbIndex: 4))
                == captured(RouteCaptures.u32Add))
    }

    @Test func qdiscDeletes() throws {
        try pinnedAndAcked(
            RouteSocket.deleteQdisc(ifindex: 2, device: "eth0", parent: .root, handle: tree), RouteCaptures.qdiscDelRoot
        )
        let ingress = try RouteSocket.deleteQdisc(
            ifindex: 3, device: "d0", parent: .ingress, handle: TCHandle(raw: 0xFFFF_0000))
        try pinnedAndAcked(ingress, RouteCaptures.qdiscDelIngress)
        // Gone since it was looked at: d0's ingress queue holds the noop qdisc (handle 0), not ffff:.
        try pinnedAndRefused(
            ingress, RouteCaptures.qdiscDelIngressRefused, errno: EINVAL, text: "Invalid handle", object: "dev d0")
    }

    @Test func classAndLeafAddsAreRefusedWhenTheTreeIsGone() throws {
        // d0's class x and its leaf (fourth run), sent after the reset deleted tree 4fa5:.
        let x = TCHandle(major: 0x4FA5, minor: 0xF5F7)
        let cls = HTBClassSpec(
            classid: x, parent: TCHandle(major: 0x4FA5, minor: 1), rate: Rate(bytesPerSecond: 1_250_000),
            ceil: Rate(bytesPerSecond: 12_500_000), burst: Size(bytes: 65536), cburst: Size(bytes: 65536),
            priority: 4, quantum: 1514)
        try pinnedAndRefused(
            RouteSocket.htbClass(.add, ifindex: 3, device: "d0", cls), RouteCaptures.classAddRefused, errno: ENOENT,
            text: nil, object: "classid 4fa5:f5f7")
        try pinnedAndRefused(
            RouteSocket.leaf(.add, ifindex: 3, device: "d0", LeafQdiscSpec(parent: x, queue: .bfifo(limit: 128 << 10))),
            RouteCaptures.leafAddBfifoRefused, errno: ENOENT, text: "Failed to find specified qdisc",
            object: "parent 4fa5:f5f7")
    }

    // MARK: - Links, addresses, routes

    @Test func vethBridgeAndIFBLinks() throws {
        try replayed(RouteCaptures.linkAddVeth, RouteCaptures.linkAddBridge, RouteCaptures.linkAddIFB) { socket in
            try socket.createVeth(host: "ns-caf7bb39", peer: "eth0", peerNamespaceFD: 15)
            try socket.createLink("crf7bb39", type: "bridge", txqueuelen: nil)
            try socket.createLink("nsifb42fc59f7", type: "ifb", txqueuelen: 1000)
        }
    }

    @Test func linkSetAndDelete() throws {
        let set = RouteSocket.setLink(_:ifindex:up:masterIfindex:)
        try pinnedAndAcked(set("lo", 1, true, nil), RouteCaptures.linkSetLoUp)
        try pinnedAndAcked(set("eth0", 2, true, nil), RouteCaptures.linkSetEth0Up)
        try pinnedAndAcked(set("ns-caf7bb39", 332, nil, 333), RouteCaptures.linkSetMaster)
        try pinnedAndAcked(set("ns-caf7bb39", 332, true, nil), RouteCaptures.linkSetHostUp)
        // The rollback's link sets (fourth run).
        try pinnedAndAcked(set("ns-cab87faa", 1518, false, nil), RouteCaptures.linkSetHostDown)
        try pinnedAndAcked(set("ns-cab87faa", 1518, nil, 0), RouteCaptures.linkSetNomaster)
        #expect(try set("ns-cab87faa", 1518, nil, 0).operation == "ip link set ns-cab87faa nomaster")
        // The device (or the master) gone since it was looked up: ENODEV, with no text from the kernel.
        try pinnedAndRefused(
            set("eth0", 2, true, nil), RouteCaptures.linkSetUpRefused, errno: ENODEV, text: nil, object: "eth0")
        try pinnedAndRefused(
            set("ns-cab87faa", 1518, nil, 1519), RouteCaptures.linkSetMasterRefused, errno: ENODEV, text: nil,
            object: "ns-cab87faa")
        // Through the socket: both names resolved by link dumps, then the request.
        try replayed(
            RouteCaptures.linkDumpHost, RouteCaptures.linkDumpHost, RouteCaptures.linkSetMaster,
            RouteCaptures.linkDelIFB, RouteCaptures.linkDelBridge
        ) { socket in
            try socket.setLink("ns-caf7bb39", master: .some("crf7bb39"))
            try socket.deleteLink("nsifb42fc59f7")
            try socket.deleteLink("crf7bb39")
        }
    }

    /// The add of the first run's apply and the delete of the second run's rollback.
    @Test func addressAndDefaultRouteAddedAndDeleted() throws {
        for (add, address, route) in [
            (true, RouteCaptures.addrAdd, RouteCaptures.routeAdd),
            (false, RouteCaptures.addrDel, RouteCaptures.routeDel),
        ] {
            try pinnedAndAcked(RouteSocket.address("198.18.30.2/24", device: "eth0", ifindex: 2, add: add), address)
            try replayed(route) { try $0.defaultRoute(via: "198.18.30.1", add: add) }
        }
    }

    // MARK: - Dumps

    @Test func qdiscDumpParses() throws {
        let q = try replayed(RouteCaptures.qdiscDumpB) { try $0.qdiscs(ifindex: 3, device: "d0") }
        let major = TCHandle(major: 0x3A97, minor: 0)
        #expect(q.map(\.kind) == ["htb", "bfifo", "bfifo", "ingress"], "only d0's (the IFB's and d1's are left out)")
        #expect(q[0].handle == major && q[0].parent == .root && q[0].htbDefault == 2)
        #expect(q[0].stats.bytes == 176 && q[0].stats.packets == 2 && q[0].stats.drops == 0)
        #expect(q[1].parent == TCHandle(major: 0x3A97, minor: 0xF5F7) && q[1].queue == .bfifo(limit: 128 << 10))
        #expect(q[2].stats.bytes == 176)
        #expect(q[3].parent == .ingress && q[3].handle == TCHandle(raw: 0xFFFF_0000))
        let ifb = try replayed(RouteCaptures.qdiscDumpB) { try $0.qdiscs(ifindex: 4, device: "nsifb42fc59f7") }
        #expect(ifb.map(\.kind) == ["htb", "bfifo"] && ifb[0].htbDefault == 1)
    }

    @Test func classDumpParsesRate64AndStats() throws {
        let classes = try replayed(RouteCaptures.classDumpEth0) { try $0.classes(ifindex: 2, device: "eth0") }
        let byMinor = Dictionary(uniqueKeysWithValues: classes.map { ($0.spec.classid.minor, $0) })
        #expect(byMinor.keys.sorted() == [1, 2, 0xDB3D])
        // Dumped with parent TC_H_ROOT, normalised to the qdisc it was created under.
        #expect(byMinor[1]?.spec.parent == tree)
        #expect(byMinor[1]?.spec.rate == gbit100 && byMinor[1]?.spec.ceil == gbit100)
        #expect(byMinor[0xDB3D].map { bulk(5_000_000_000, burst: 20_000_000).matches($0.spec) } == true)
        #expect(
            byMinor[2]?.spec.rate == Rate(bytesPerSecond: 1_250_000))
        // 65536 B asked; the kernel keeps it as psched ticks at 10 Mbit/s and libnl converts back.
        #expect(byMinor[2]?.spec.burst == Size(bytes: 65533))
        #expect(byMinor[2].map { other.matches($0.spec) } == true)
        #expect(byMinor[2]?.stats.bytes == 176 && byMinor[2]?.stats.packets == 2)
        let d0 = try replayed(RouteCaptures.classDumpD0) { try $0.classes(ifindex: 3, device: "d0") }
        #expect(d0.map(\.spec.quantum).sorted() == [1514, 11250, 12500])
    }

    @Test func aRateChangesReadBackGetsTheClassAlone() throws {
        let id = TCHandle(major: 0x667C, minor: 0xDB3D)
        #expect(masked(RouteSocket.classGetRequest(ifindex: 2, classid: id).bytes) == captured(RouteCaptures.classGet))
        // The kernel echoes the class (NLM_F_ECHO), then ACKs: bulk at its new 45gbit.
        let got = try replayed(RouteCaptures.classGet) { try $0.classes(ifindex: 2, device: "eth0", only: [id]) }
        #expect(got.map(\.spec.classid) == [id])
        #expect(got.first?.spec.rate == Rate(bytesPerSecond: 5_625_000_000) && got.first?.spec.ceil == gbit100)
    }

    @Test func linkDumpsParse() throws {
        let links = try replayed(RouteCaptures.linkDumpB) { try $0.links() }
        #expect(links.map(\.name) == ["lo", "d1", "d0", "nsifb42fc59f7"])
        #expect(links.map(\.type) == ["", "veth", "veth", "ifb"])
        #expect(links[2].ifindex == 3 && links[2].peerIfindex == 2 && !links[2].peerInOtherNamespace)
        let host = try replayed(RouteCaptures.linkDumpHost) { try $0.links() }
        let veth = host.first { $0.name == "ns-caf7bb39" }
        #expect(veth?.type == "veth" && veth?.peerIfindex == 2 && veth?.peerInOtherNamespace == true)
        #expect(host.first { $0.name == "crf7bb39" }?.type == "bridge")
    }

    @Test func routeDumpFindsTheDefaultRoutesDevice() throws {
        #expect(try replayed(RouteCaptures.routeDump) { try $0.defaultRouteIfindex() } == 2)
    }

    // MARK: - Second run: replace, deletes, the IPv6 route dump, refusals with extended-ACK text

    @Test func htbRootReplaceAndDeletesAreAcked() throws {
        let bulkID = TCHandle(major: 0xA00, minor: 0xDB3D)
        let replace = try RouteSocket.htbRoot(
            .replace, ifindex: 3, device: "d0", HTBQdiscSpec(handle: TCHandle(major: 0x2EB1, minor: 0), defaultMinor: 2)
        )
        // NLM_F_REPLACE (0x100, the bit `root` has in a GET) with CREATE: neither EXCL nor a plain add.
        #expect(replace.message.flags == [.request, .ack, .create, .root])
        try pinnedAndAcked(replace, RouteCaptures.htbRootReplace)
        // The leaf goes by its parent alone (the kernel chose its handle): handle 0 on the wire.
        try pinnedAndAcked(
            RouteSocket.deleteQdisc(ifindex: 2, device: "eth0", parent: bulkID, handle: nil), RouteCaptures.leafDel)
        let spec = bulk(5_000_000_000, burst: 20_000_000)
        let cls = HTBClassSpec(
            classid: bulkID, parent: TCHandle(major: 0xA00, minor: 1), rate: spec.rate, ceil: spec.ceil,
            burst: spec.burst,
            cburst: spec.cburst, priority: spec.priority, quantum: spec.quantum)
        try pinnedAndAcked(RouteSocket.deleteClass(ifindex: 2, device: "eth0", cls), RouteCaptures.classDel)
    }

    @Test func theLeafAndClassDeletesOfABatchHaveTheirOwnACKs() {
        let bulkID = TCHandle(major: 0xA00, minor: 0xDB3D)
        let requests = [
            try! RouteSocket.deleteQdisc(ifindex: 2, device: "eth0", parent: bulkID, handle: nil),
            try! RouteSocket.deleteClass(
                ifindex: 2, device: "eth0",
                HTBClassSpec(
                    classid: bulkID, parent: TCHandle(major: 0xA00, minor: 1), rate: gbit100, ceil: gbit100,
                    burst: Size(bytes: 1), cburst: Size(bytes: 1), priority: 0, quantum: 1514)),
        ]
        let t = SeqReplayTransport(
            replies: [RouteCaptures.leafDel, RouteCaptures.classDel].flatMap(\.replies).map(hex))
        let results = NetlinkSession(transport: t, firstSeq: 0).transact(batch: requests)
        #expect(results.count == 2 && results.allSatisfy { !$0.isFailure })
        #expect(t.sent.count == 1, "one datagram")
        #expect(
            (try? NetlinkMessage.parse(t.sent[0]).map { masked($0.bytes) })
                == [captured(RouteCaptures.leafDel), captured(RouteCaptures.classDel)])
    }

    @Test func routeDumpWithoutADefaultRouteTriesIPv6Too() throws {
        // B has only the fe80::/64 routes of d0, d1 and the IFB: no default route in either family.
        let found = try replayed(RouteCaptures.routeDumpNoDefault, RouteCaptures.routeDumpV6) {
            try $0.defaultRouteIfindex()
        }
        #expect(found == nil)
        #expect(
            RouteSocket.routeDumpRequest(family: AF_INET6).bytes.count == hex(RouteCaptures.routeDumpV6.request).count)
        #expect(masked(RouteSocket.routeDumpRequest(family: AF_INET6).bytes) == captured(RouteCaptures.routeDumpV6))
    }

    @Test func refusalsKeepTheKernelsExtendedACKText() throws {
        for (request, e, text) in [
            (try probeLeaf(.fqCodel), RouteCaptures.leafReplaceFqCodelRefused, "Specified qdisc kind is unknown"),
            (try probeLeaf(.sfq), RouteCaptures.leafReplaceSfqRefused, "Specified qdisc kind is unknown"),
            (try probeCgroup, RouteCaptures.cgroupAddRefused, "TC classifier not found"),
        ] {
            try pinnedAndRefused(request, e, errno: ENOENT, text: text, object: "dev lo")
        }
    }

    // MARK: - Fifth run: d0's classifier filters, a class going from a cgroup v2 path to net_cls and back

    let d0Tree = TCHandle(major: 0x2B71, minor: 0)

    /// The filter add of `kind` on d0 (ifindex 3), with a program fd no capture has: `fdMasked`
    /// zeroes it on both sides.
    func filterAdd(_ kind: ClassifierKind, programFD: Int32 = 99) -> NetlinkRequest {
        FilterSocket.addBpfFilter(
            ifindex: 3, device: "d0", FilterSpec(parent: d0Tree, kind: kind), programFD: programFD)
    }

    @Test func theCgroup2AndClassidFilterAddsAreAcked() throws {
        try pinnedAndAcked(filterAdd(.cgroup2), RouteCaptures.cgroup2FilterAdd)
        try pinnedAndAcked(filterAdd(.bpf), RouteCaptures.classidFilterAdd)
        #expect(
            filterAdd(.cgroup2).operation
                == "tc filter add dev d0 parent 2b71: protocol all prio 16606 handle 1 bpf name netshape_cgroup2")
        // The mask hides the fd alone: built with the capture's own fd, only seq and pid differ.
        for (kind, e) in [
            (ClassifierKind.cgroup2, RouteCaptures.cgroup2FilterAdd), (.bpf, RouteCaptures.classidFilterAdd),
        ] {
            let fd = Int32(bitPattern: NetlinkReader(hex(e.request), at: 0).u32(52))
            #expect(masked(filterAdd(kind, programFD: fd).message.bytes) == masked(hex(e.request)))
            #expect(masked(hex(e.request)) != captured(e), "fd \(fd) is where fdMasked zeroes it")
        }
    }

    @Test func oneFilterDeleteNamesEitherFilterAndIsAcked() throws {
        // Both are cls_bpf at netshape's priority and handle 1: the same request deletes either.
        for kind in [ClassifierKind.cgroup2, .bpf] {
            for e in [RouteCaptures.cgroup2FilterDel, RouteCaptures.classidFilterDel] {
                try pinnedAndAcked(
                    FilterSocket.deleteFilter(ifindex: 3, device: "d0", FilterSpec(parent: d0Tree, kind: kind)), e)
            }
        }
    }

    @Test func aFilterDeleteIsRefusedWhenTheFilterIsGone() throws {
        let delete = FilterSocket.deleteFilter(ifindex: 3, device: "d0", FilterSpec(parent: d0Tree, kind: .cgroup2))
        #expect(delete.operation == "tc filter del dev d0 parent 2b71: protocol all prio 16606 handle 1 bpf")
        // Chain 0 went with its last filter: the kernel says so before it looks for the priority.
        try pinnedAndRefused(
            delete, RouteCaptures.filterDelRefused, errno: ENOENT, text: "Cannot find specified filter chain",
            object: "dev d0 parent 2b71: protocol all prio 16606")
    }

    @Test func filterDumpsTellTheTwoProgramsApart() throws {
        // Each with its chain head (handle 0, skipped); the ids are the capture's TCA_BPF_ID.
        for (e, name, id) in [
            (RouteCaptures.filterDumpCgroup2, FilterSpec.cgroup2ProgramName, UInt32(0x1D25)),
            (RouteCaptures.filterDumpClassid, FilterSpec.bpfProgramName, 0x1D26),
        ] {
            let filters = try replayed(e) {
                try FilterSocket(session: $0.session, namespace: "test").filters(
                    ifindex: 3, device: "d0", parent: d0Tree)
            }
            #expect(
                filters == [
                    ObservedFilter(
                        parent: d0Tree, kind: "bpf", priority: 16606, handle: 1, bpfName: name, bpfProgramID: id)
                ])
        }
    }

    // MARK: - A batch on the wire

    @Test func aBatchCarriesTheSameMessagesInOneDatagram() throws {
        let requests = [
            try RouteSocket.htbRoot(.add, ifindex: 2, device: "eth0", HTBQdiscSpec(handle: tree, defaultMinor: 2)),
            try RouteSocket.htbClass(.add, ifindex: 2, device: "eth0", bulk(5_000_000_000, burst: 20_000_000)),
            try RouteSocket.leaf(
                .add, ifindex: 2, device: "eth0",
                LeafQdiscSpec(parent: TCHandle(major: 0xB7E, minor: 0xDB3D), queue: .pfifo(limit: 82562))),
        ]
        let t = AckingTransport()
        let results = NetlinkSession(transport: t, firstSeq: 0).transact(batch: requests)
        #expect(results.count == 3)
        #expect(t.datagrams.count == 1)
        #expect(
            t.datagrams[0].map { masked($0.bytes) } == [
                captured(RouteCaptures.htbRootAdd), captured(RouteCaptures.classAddBulk),
                captured(RouteCaptures.leafAddPfifo),
            ])
    }
}
