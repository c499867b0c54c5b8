import CNetshapeShim
import Glibc
import NetshapeCore
import Testing

@testable import NetshapeKernel

/// A transport that answers every message of every datagram as the kernel does (one NLMSG_ERROR
/// per request, in order, errno 0 for an ACK), so batches can be checked without a kernel.
final class AckingTransport: NetlinkTransport {
    let portID: UInt32 = 77
    /// Every datagram sent, split into its messages.
    var datagrams: [[NetlinkMessage]] = []
    /// The errno the kernel answers the n-th request with (counted over all datagrams from 0).
    var errnoFor: (Int) -> Int32 = { _ in 0 }
    /// After this many replies, `receive` fails as a socket that overflowed would.
    var failReceiveAfter: Int?
    private var pending: [NetlinkMessage] = []
    private var requests = 0
    private var replies = 0

    func send(_ bytes: [UInt8]) throws {
        let messages = try NetlinkMessage.parse(bytes)
        datagrams.append(messages)
        for m in messages {
            var w = NetlinkWriter()
            w.i32(-errnoFor(requests))
            w.raw(Array(m.bytes.prefix(16)))
            requests += 1
            pending.append(
                NetlinkMessage(type: Netlink.error, flags: [.capped], seq: m.seq, pid: portID, payload: w.bytes))
        }
        // A stray reply, to the request sent just before this datagram (by an earlier run on a
        // reused port, or one that timed out): its seq is no request's of this datagram, and it
        // is a refusal, so counting it would show up as a failure.
        var stray = NetlinkWriter()
        stray.i32(-EBUSY)
        stray.raw(Array(messages[0].bytes.prefix(16)))
        pending.insert(
            NetlinkMessage(
                type: Netlink.error, flags: [.capped], seq: messages[0].seq &- 1, pid: portID, payload: stray.bytes),
            at: 0)
    }

    func receive(timeoutMilliseconds: Int32?) throws -> [NetlinkMessage]? {
        if let n = failReceiveAfter, replies >= n {
            throw KernelError(.netlinkSocket, "recv(test)", errno: ENOBUFS, reason: "No buffer space available")
        }
        guard !pending.isEmpty else {
            throw KernelError(.state, "replay", reason: "the code under test waits for a reply nobody scripted")
        }
        replies += 1
        return [pending.removeFirst()]
    }
}

@Suite struct NetlinkBatchTests {
    /// `n` requests whose payload is `payload` bytes long, named "op 0", "op 1", …
    func requests(_ n: Int, payload: Int) -> [NetlinkRequest] {
        (0..<n).map { i in
            NetlinkRequest(
                message: NetlinkMessage(
                    type: UInt16(RTM_NEWTCLASS), flags: [.request, .ack, .create, .excl],
                    payload: [UInt8](repeating: UInt8(i & 0xFF), count: payload)),
                operation: "op \(i)")
        }
    }

    func failures(_ results: [Result<Void, KernelError>]) -> [Int: KernelError] {
        var out: [Int: KernelError] = [:]
        for (i, r) in results.enumerated() { if case .failure(let e) = r { out[i] = e } }
        return out
    }

    @Test func smallRequestsShareDatagramsUpToTheMessageLimit() {
        let t = AckingTransport()
        let session = NetlinkSession(transport: t, firstSeq: 1000)
        let results = session.transact(batch: requests(300, payload: 20))
        #expect(results.count == 300)
        #expect(failures(results).isEmpty)
        #expect(t.datagrams.map(\.count) == [128, 128, 44])
        let seqs = t.datagrams.flatMap { $0.map(\.seq) }
        #expect(seqs == Array(1001...1300), "each request has its own sequence number, in order")
    }

    @Test func classSizedRequestsShareDatagramsUpToTheByteLimit() {
        // An HTB class request as libnl builds it (rate and ceil tables included) is 2152 bytes.
        let t = AckingTransport()
        let results = NetlinkSession(transport: t, firstSeq: 0).transact(batch: requests(100, payload: 2136))
        #expect(results.count == 100 && failures(results).isEmpty)
        let perDatagram = NetlinkSession.maxBatchBytes / 2152
        #expect(t.datagrams.count == (100 + perDatagram - 1) / perDatagram)
        #expect(t.datagrams.allSatisfy { $0.count <= perDatagram })
        #expect(t.datagrams.allSatisfy { $0.reduce(0) { $0 + $1.bytes.count } <= NetlinkSession.maxBatchBytes })
    }

    @Test func aFailureKeepsItsErrnoAndStopsAfterItsDatagram() {
        let t = AckingTransport()
        t.errnoFor = { $0 == 5 ? EEXIST : 0 }
        let results = NetlinkSession(transport: t, firstSeq: 0).transact(batch: requests(300, payload: 20))
        // The kernel carried on after request 5: the rest of its datagram has its own results.
        #expect(results.count == 128)
        #expect(t.datagrams.count == 1, "nothing is sent after a datagram with a failure")
        let failed = failures(results)
        #expect(failed.keys.sorted() == [5])
        #expect(failed[5]?.errno == EEXIST)
        #expect(failed[5]?.operation == "op 5")
    }

    @Test func aSocketErrorFailsTheRequestsStillWaitingForTheirAnswer() {
        let t = AckingTransport()
        // Three datagrams are read: the stray reply (skipped), then the answers to requests 0 and 1.
        t.failReceiveAfter = 3
        let results = NetlinkSession(transport: t, firstSeq: 0).transact(batch: requests(10, payload: 20))
        #expect(results.count == 10)
        let failed = failures(results)
        #expect(failed.keys.sorted() == Array(2..<10))
        #expect(failed.values.allSatisfy { $0.errno == ENOBUFS })
        #expect(failed[7]?.operation == "op 7")
        #expect(failed[7]?.description == "op 7: recv(test): No buffer space available (errno \(ENOBUFS))")
    }

    @Test func aStrayReplyIsNeitherAnAnswerNorAFailure() {
        let t = AckingTransport()
        let results = NetlinkSession(transport: t, firstSeq: 0).transact(batch: requests(3, payload: 20))
        #expect(t.datagrams[0].map(\.seq) == [1, 2, 3], "the stray (seq 0, EBUSY) answers none of them")
        #expect(results.count == 3 && failures(results).isEmpty)
    }

    /// A kernel port whose host sockets go over `transport`, for operations resolved to the host.
    func kernel(over transport: any NetlinkTransport) throws -> LinuxKernel {
        let k = LinuxKernel(settings: Settings())
        let route = RouteSocket(session: NetlinkSession(transport: transport, firstSeq: 0), namespace: "host")
        k.sockets["host"] = LinuxKernel.Sockets(
            netns: try NetworkNamespace(.host), route: route,
            filterSocket: FilterSocket(session: route.session, namespace: "host"))
        return k
    }

    @Test func aFailureMidDatagramReportsTheLaterSuccessesAndSendsNothingAfter() throws {
        let t = AckingTransport()
        t.errnoFor = { $0 == 1 ? EEXIST : 0 }
        let k = try kernel(over: t)
        let qdisc = TCHandle(major: 0xB7E, minor: 0)
        func op(_ a: Operation.Action) -> Operation {
            var o = Operation(namespace: "n", device: "eth0", link: .namespace, action: a)
            o.target = ResolvedTarget(netns: .host, ifindex: 2)
            return o
        }
        func cls(_ minor: UInt16) -> Operation.Action {
            let rate = Rate.mbit(10)
            return .addClass(
                HTBClassSpec(
                    classid: TCHandle(major: 0xB7E, minor: minor), parent: qdisc, rate: rate, ceil: rate,
                    burst: Size(bytes: 65536), cburst: Size(bytes: 65536), priority: 0, quantum: 1514))
        }
        // Three tc operations in one datagram, the second refused; then an IFB (alone, a link
        // request) and another class: neither may be sent.
        let ops = [
            op(.addRootQdisc(HTBQdiscSpec(handle: qdisc, defaultMinor: 2))), op(cls(2)), op(cls(3)),
            op(.deleteIFB("nsifbx")), op(cls(4)),
        ]
        let results = k.execute(ops)
        #expect(results.count == 3)
        #expect(results.map(\.isFailure) == [false, true, false], "the kernel went on after the refusal")
        if case .failure(let e) = results[1] { #expect((e as? KernelError)?.errno == EEXIST) }
        #expect(t.datagrams.count == 1 && t.datagrams[0].count == 3, "nothing sent after the failed datagram")
    }
}
