internal import CNetshapeShim
import Glibc
import NetshapeCore

/// `struct tcmsg` (linux/rtnetlink.h), the fixed header of every tc message: 20 bytes.
struct TCMessage: Equatable, Sendable {
    var family: UInt8 = UInt8(AF_UNSPEC)
    var ifindex: Int32
    var handle: UInt32 = 0
    var parent: TCHandle
    /// For filters: priority in the high 16 bits, protocol (network byte order) in the low 16.
    var info: UInt32 = 0

    static let size = 20

    func write(into w: inout NetlinkWriter) {
        w.u8(family)
        w.u8(0)  // tcm__pad1
        w.u16(0)  // tcm__pad2
        w.i32(ifindex)
        w.u32(handle)
        w.u32(parent.raw)
        w.u32(info)
    }

    init(family: UInt8 = UInt8(AF_UNSPEC), ifindex: Int32, handle: UInt32 = 0, parent: TCHandle, info: UInt32 = 0) {
        self.family = family
        self.ifindex = ifindex
        self.handle = handle
        self.parent = parent
        self.info = info
    }

    /// The header of a tc message's payload; nil when the payload is shorter than a tcmsg.
    init?(payload: [UInt8]) {
        guard payload.count >= Self.size else { return nil }
        let r = NetlinkReader(payload, at: 0)
        family = payload[0]
        ifindex = Int32(bitPattern: r.u32(4))
        handle = r.u32(8)
        parent = TCHandle(raw: r.u32(12))
        info = r.u32(16)
    }
}

/// The attributes of a tc filter message that netshape reads or writes (linux/rtnetlink.h
/// `TCA_*`, linux/pkt_cls.h `TCA_BPF_*`); anything else is kept as `.other`.
enum TCFilterAttribute: Equatable, Sendable {
    case kind(String)
    case bpfOptions([BPFOption])
    case other(NetlinkAttribute)

    enum BPFOption: Equatable, Sendable {
        /// The program to attach, by file descriptor (requests only).
        case fd(Int32)
        /// The program's name (`tc filter show` prints it; the dump carries it back).
        case name(String)
        /// The id of the program the filter runs (dumps only).
        case id(UInt32)
        case other(NetlinkAttribute)
    }

    /// Decodes the attributes after a filter's tcmsg. Options are only decoded for `bpf`: each
    /// kind numbers its own options from 1.
    static func decode(_ attributes: [NetlinkAttribute]) -> [TCFilterAttribute] {
        var kind: String?
        return attributes.map { a in
            switch Int32(a.type) {
            case Int32(TCA_KIND):
                kind = a.string
                return .kind(a.string)
            case Int32(TCA_OPTIONS) where kind == "bpf":
                return .bpfOptions(
                    a.attributes.map { o in
                        switch Int32(o.type) {
                        case Int32(TCA_BPF_FD): return o.u32.map { .fd(Int32(bitPattern: $0)) } ?? .other(o)
                        case Int32(TCA_BPF_NAME): return .name(o.string)
                        case Int32(TCA_BPF_ID): return o.u32.map { .id($0) } ?? .other(o)
                        default: return .other(o)
                        }
                    })
            default: return .other(a)
            }
        }
    }
}

/// tc filter requests through netshape's own netlink layer, in one namespace (the socket is opened
/// inside it): cls_bpf add, any filter delete, and filter dumps. libnl-route has no cls_bpf object.
/// Errors keep the kernel's errno and its extended-ACK message when it sends one.
final class FilterSocket {
    let session: NetlinkSession
    let namespace: String

    /// Over any transport (tests replay captured replies).
    convenience init(transport: any NetlinkTransport, namespace: String, firstSeq: UInt32? = nil) {
        self.init(session: NetlinkSession(transport: transport, firstSeq: firstSeq), namespace: namespace)
    }

    /// Sharing a session (and its socket) with the namespace's `RouteSocket`.
    init(session: NetlinkSession, namespace: String) {
        self.session = session
        self.namespace = namespace
    }

    /// `tcm_info` of a filter: priority in the high 16 bits, protocol (network order) in the low.
    static func filterInfo(priority: UInt16) -> UInt32 {
        netshape_tc_h_make(UInt32(priority) << 16, UInt32(netshape_eth_p_all_be()))
    }

    /// `tc filter add dev D parent M: protocol all prio P handle H bpf fd FD name N` — NOT
    /// direct-action: the program's return value is then the full 32-bit classid (0 = no match).
    func addBpfFilter(ifindex: Int32, device: String, _ f: FilterSpec, programFD: Int32) throws {
        let r = Self.addBpfFilter(ifindex: ifindex, device: device, f, programFD: programFD)
        try session.transact(r.message, r.operation)
    }

    /// The request of `addBpfFilter`.
    static func addBpfFilter(ifindex: Int32, device: String, _ f: FilterSpec, programFD: Int32) -> NetlinkRequest {
        NetlinkRequest(
            message: addBpfFilterRequest(ifindex: ifindex, f, programFD: programFD),
            operation:
                "tc filter add dev \(device) parent \(f.parent) protocol all prio \(f.priority) handle \(f.handle) bpf name \(f.kind.filterName ?? FilterSpec.bpfProgramName)"
        )
    }

    /// `tc filter del dev D parent M: protocol all prio P handle H KIND`.
    func deleteFilter(ifindex: Int32, device: String, _ f: FilterSpec) throws {
        let r = Self.deleteFilter(ifindex: ifindex, device: device, f)
        try session.transact(r.message, r.operation)
    }

    /// The request of `deleteFilter`, for sending in a batch.
    static func deleteFilter(ifindex: Int32, device: String, _ f: FilterSpec) -> NetlinkRequest {
        NetlinkRequest(
            message: deleteFilterRequest(ifindex: ifindex, f),
            operation:
                "tc filter del dev \(device) parent \(f.parent) protocol all prio \(f.priority) handle \(f.handle) \(f.kind.kind)"
        )
    }

    /// RTM_NEWTFILTER with CREATE|EXCL (tc's `add`) for netshape's cls_bpf filter.
    static func addBpfFilterRequest(ifindex: Int32, _ f: FilterSpec, programFD: Int32) -> NetlinkMessage {
        filterMessage(type: UInt16(RTM_NEWTFILTER), flags: [.request, .ack, .create, .excl], ifindex: ifindex, f) {
            w in
            w.nest(UInt16(TCA_OPTIONS)) { o in
                o.attribute(UInt16(TCA_BPF_FD), u32: UInt32(bitPattern: programFD))
                o.attribute(UInt16(TCA_BPF_NAME), string: f.kind.filterName ?? FilterSpec.bpfProgramName)
            }
        }
    }

    /// RTM_DELTFILTER naming the filter by parent, priority, protocol, handle and kind.
    static func deleteFilterRequest(ifindex: Int32, _ f: FilterSpec) -> NetlinkMessage {
        filterMessage(type: UInt16(RTM_DELTFILTER), flags: [.request, .ack], ifindex: ifindex, f) { _ in }
    }

    static func filterMessage(
        type: UInt16, flags: Netlink.Flags, ifindex: Int32, _ f: FilterSpec, options: (inout NetlinkWriter) -> Void
    ) -> NetlinkMessage {
        var w = NetlinkWriter()
        TCMessage(ifindex: ifindex, handle: f.handle, parent: f.parent, info: filterInfo(priority: f.priority))
            .write(into: &w)
        w.attribute(UInt16(TCA_KIND), string: f.kind.kind)
        options(&w)
        return NetlinkMessage(type: type, flags: flags, payload: w.bytes)
    }

    /// RTM_GETTFILTER dump of every filter under `parent` on `ifindex`.
    static func filterDumpRequest(ifindex: Int32, parent: TCHandle) -> NetlinkMessage {
        var w = NetlinkWriter()
        TCMessage(ifindex: ifindex, parent: parent).write(into: &w)
        return NetlinkMessage(type: UInt16(RTM_GETTFILTER), flags: [.request, .dump], payload: w.bytes)
    }

    /// A filter of a dump reply as netshape observes it; nil for other messages and for the chain
    /// head the kernel reports per priority (handle 0, no options).
    static func observedFilter(_ m: NetlinkMessage) -> ObservedFilter? {
        guard m.type == UInt16(RTM_NEWTFILTER), let tcm = TCMessage(payload: m.payload), tcm.handle != 0 else {
            return nil
        }
        var kind = "?"
        var name: String?
        var id: UInt32?
        for a in TCFilterAttribute.decode(NetlinkAttribute.parse(m.payload[TCMessage.size...])) {
            switch a {
            case .kind(let k): kind = k
            case .bpfOptions(let options):
                for o in options {
                    if case .name(let n) = o { name = n }
                    if case .id(let i) = o { id = i }
                }
            case .other: break
            }
        }
        return ObservedFilter(
            parent: tcm.parent, kind: kind, priority: UInt16(tcm.info >> 16), handle: tcm.handle, bpfName: name,
            bpfProgramID: id)
    }

    /// Every filter under `parent` on `ifindex` (`tc filter show dev D parent P`), chain heads skipped.
    func filters(ifindex: Int32, device: String, parent: TCHandle) throws -> [ObservedFilter] {
        var out: [ObservedFilter] = []
        do {
            try session.transact(
                Self.filterDumpRequest(ifindex: ifindex, parent: parent),
                "tc filter show dev \(device) parent \(parent)"
            ) { m in
                if let f = Self.observedFilter(m) { out.append(f) }
            }
        } catch let e as KernelError where e.errno == EINVAL || e.errno == ENOENT {
            // No qdisc with that handle (yet): nothing is attached under it.
            return []
        }
        return out
    }
}
