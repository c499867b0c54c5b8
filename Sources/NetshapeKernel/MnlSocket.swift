internal import CLibmnl
internal import CNetshapeShim
import Glibc
import NetshapeCore

/// The attributes of a netlink message or nest, as a Swift sequence over libmnl's
/// `mnl_attr_ok`/`mnl_attr_next` (the `mnl_attr_for_each` macro has no function form).
struct NetlinkAttributes: Sequence {
    let start: UnsafeRawPointer
    let length: Int

    struct Iterator: IteratorProtocol {
        var current: UnsafePointer<nlattr>
        var remaining: Int
        mutating func next() -> UnsafePointer<nlattr>? {
            guard remaining > 0, mnl_attr_ok(current, Int32(remaining)) else { return nil }
            let attr = current
            let len = Int(mnl_attr_get_len(attr) + 3) & ~3  // MNL_ALIGN
            remaining -= len
            current = UnsafePointer(mnl_attr_next(attr))
            return attr
        }
    }

    func makeIterator() -> Iterator {
        Iterator(current: start.assumingMemoryBound(to: nlattr.self), remaining: length)
    }

    /// The attributes in `length` bytes at `start`.
    init(start: UnsafeRawPointer, length: Int) {
        self.start = start
        self.length = length
    }

    /// The attributes of `nlh` after a fixed header of `headerSize` bytes.
    init(message nlh: UnsafePointer<nlmsghdr>, headerSize: Int) {
        let payload = UnsafeRawPointer(mnl_nlmsg_get_payload_offset(nlh, headerSize)!)
        start = payload
        length = Int(nlh.pointee.nlmsg_len) - (payload - UnsafeRawPointer(nlh))
    }

    /// The attributes nested in `attr`.
    init(nested attr: UnsafePointer<nlattr>) {
        start = UnsafeRawPointer(mnl_attr_get_payload(attr)!)
        length = Int(mnl_attr_get_payload_len(attr))
    }
}

/// A libmnl socket bound to one namespace (opened inside it), for the requests libnl has no object
/// for. Errors keep the kernel's errno and its extended-ACK message when it sends one.
final class MnlSocket {
    let nl: OpaquePointer
    let portid: UInt32
    var seq: UInt32
    let namespace: String
    static let receiveBufferSize = 64 * 1024

    /// Opens and binds a netlink socket of `bus` in the calling thread's namespace.
    init(bus: Int32, namespace: String) throws {
        guard let nl = mnl_socket_open(bus) else {
            throw KernelError.syscall("mnl_socket_open(\(bus)) in \(namespace)", errno)
        }
        guard mnl_socket_bind(nl, 0, 0 /* MNL_SOCKET_AUTOPID */) == 0 else {
            let e = errno
            mnl_socket_close(nl)
            throw KernelError.syscall("mnl_socket_bind in \(namespace)", e)
        }
        var one: Int32 = 1
        // Best effort: kernels since 4.12 explain EINVAL & co. in a text attribute.
        _ = mnl_socket_setsockopt(nl, 11 /* NETLINK_EXT_ACK */, &one, socklen_t(MemoryLayout<Int32>.size))
        self.nl = nl
        self.portid = mnl_socket_get_portid(nl)
        self.seq = UInt32(truncatingIfNeeded: Int(bitPattern: UInt(time(nil))))
        self.namespace = namespace
    }

    deinit { mnl_socket_close(nl) }

    var fd: Int32 { mnl_socket_get_fd(nl) }

    /// Builds a request with the next sequence number.
    func message(type: UInt16, flags: Int32, fill: (UnsafeMutablePointer<nlmsghdr>) -> Void) -> [UInt8] {
        seq &+= 1
        return Self.message(type: type, flags: flags, seq: seq, fill: fill)
    }

    /// Builds a request in a fresh buffer: `fill` receives the header (type, flags and seq set).
    /// Pure, so the wire format is pinned by golden-byte tests.
    static func message(
        type: UInt16, flags: Int32, seq s: UInt32,
        fill: (UnsafeMutablePointer<nlmsghdr>) -> Void
    ) -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: 8192)
        buf.withUnsafeMutableBytes { raw in
            let nlh = mnl_nlmsg_put_header(raw.baseAddress)!
            nlh.pointee.nlmsg_type = type
            nlh.pointee.nlmsg_flags = UInt16(NLM_F_REQUEST | flags)
            nlh.pointee.nlmsg_seq = s
            fill(nlh)
        }
        let len = buf.withUnsafeBytes { Int($0.load(as: UInt32.self)) }
        return Array(buf[0..<len])
    }

    /// Sends `request` and reads replies until the ACK (or DONE for dumps), passing every data
    /// message to `onMessage`. Throws with errno and the extended-ACK text on an error reply.
    func transact(_ request: [UInt8], _ op: String, onMessage: (UnsafePointer<nlmsghdr>) throws -> Void = { _ in })
        throws
    {
        let sent = request.withUnsafeBytes { mnl_socket_sendto(nl, $0.baseAddress, $0.count) }
        guard sent >= 0 else { throw KernelError.syscall("\(op): sendto", errno) }
        let wantSeq = request.withUnsafeBytes { $0.load(fromByteOffset: 8, as: UInt32.self) }
        var buf = [UInt8](repeating: 0, count: Self.receiveBufferSize)
        while true {
            let n = buf.withUnsafeMutableBytes { mnl_socket_recvfrom(nl, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw KernelError.syscall("\(op): recvfrom", errno)
            }
            var finished = false
            try buf.withUnsafeBytes { raw in
                var len = Int32(n)
                var cur = raw.baseAddress!.assumingMemoryBound(to: nlmsghdr.self)
                while mnl_nlmsg_ok(cur, len) {
                    defer { cur = UnsafePointer(mnl_nlmsg_next(cur, &len)) }
                    guard cur.pointee.nlmsg_seq == wantSeq else { continue }
                    switch Int32(cur.pointee.nlmsg_type) {
                    case NLMSG_DONE:
                        finished = true
                    case NLMSG_ERROR:
                        let err = UnsafeRawPointer(mnl_nlmsg_get_payload(cur)!).load(as: Int32.self)
                        if err != 0 {
                            throw KernelError(
                                .mnl, op, errno: -err,
                                reason: Self.extAckMessage(cur) ?? String(cString: strerror(-err)))
                        }
                        finished = true
                    default:
                        try onMessage(cur)
                    }
                }
            }
            if finished { return }
        }
    }

    /// The `NLMSGERR_ATTR_MSG` text of an error reply, when the kernel attached one.
    static func extAckMessage(_ nlh: UnsafePointer<nlmsghdr>) -> String? {
        guard nlh.pointee.nlmsg_flags & 0x200 /* NLM_F_ACK_TLVS */ != 0 else { return nil }
        let payload = UnsafeRawPointer(mnl_nlmsg_get_payload(nlh)!)
        // struct nlmsgerr = int error + the offending request's header (and its payload unless capped).
        let inner = payload.advanced(by: 4).assumingMemoryBound(to: nlmsghdr.self)
        let capped = nlh.pointee.nlmsg_flags & 0x100 /* NLM_F_CAPPED */ != 0
        let innerLen = capped ? MemoryLayout<nlmsghdr>.size : Int(inner.pointee.nlmsg_len)
        let tlvStart = payload.advanced(by: 4 + ((innerLen + 3) & ~3))
        let total = Int(nlh.pointee.nlmsg_len) - (tlvStart - UnsafeRawPointer(nlh))
        guard total > 0 else { return nil }
        for attr in NetlinkAttributes(start: tlvStart, length: total) where mnl_attr_get_type(attr) == 1 {
            return String(cString: mnl_attr_get_str(attr))
        }
        return nil
    }

    // MARK: - Filters (RTM_*TFILTER)

    /// `tcm_info` of a filter: priority in the high 16 bits, protocol (network order) in the low.
    static func filterInfo(priority: UInt16) -> UInt32 {
        netshape_tc_h_make(UInt32(priority) << 16, UInt32(netshape_eth_p_all_be()))
    }

    /// `tc filter add dev D parent M: protocol all prio P handle H bpf fd FD name N` — NOT
    /// direct-action: the program's return value is then the full 32-bit classid (0 = no match).
    func addBpfFilter(ifindex: Int32, device: String, _ f: FilterSpec, programFD: Int32) throws {
        let op =
            "tc filter add dev \(device) parent \(f.parent) protocol all prio \(f.priority) handle \(f.handle) bpf name \(FilterSpec.bpfProgramName)"
        seq &+= 1
        try transact(Self.addBpfFilterRequest(seq: seq, ifindex: ifindex, f, programFD: programFD), op)
    }

    /// `tc filter del dev D parent M: protocol all prio P handle H KIND`.
    func deleteFilter(ifindex: Int32, device: String, _ f: FilterSpec) throws {
        let op =
            "tc filter del dev \(device) parent \(f.parent) protocol all prio \(f.priority) handle \(f.handle) \(f.kind.kind)"
        seq &+= 1
        try transact(
            Self.filterMessage(type: UInt16(RTM_DELTFILTER), flags: NLM_F_ACK, seq: seq, ifindex: ifindex, f) { _ in },
            op)
    }

    /// The RTM_NEWTFILTER request for netshape's cls_bpf filter.
    static func addBpfFilterRequest(seq: UInt32, ifindex: Int32, _ f: FilterSpec, programFD: Int32) -> [UInt8] {
        filterMessage(
            type: UInt16(RTM_NEWTFILTER), flags: NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq: seq,
            ifindex: ifindex, f
        ) { nlh in
            let nest = mnl_attr_nest_start(nlh, UInt16(TCA_OPTIONS))
            mnl_attr_put_u32(nlh, UInt16(TCA_BPF_FD), UInt32(bitPattern: programFD))
            mnl_attr_put_strz(nlh, UInt16(TCA_BPF_NAME), FilterSpec.bpfProgramName)
            mnl_attr_nest_end(nlh, nest)
        }
    }

    static func filterMessage(
        type: UInt16, flags: Int32, seq: UInt32, ifindex: Int32, _ f: FilterSpec,
        options: (UnsafeMutablePointer<nlmsghdr>) -> Void
    ) -> [UInt8] {
        message(type: type, flags: flags, seq: seq) { nlh in
            let tcm = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<tcmsg>.size)!.assumingMemoryBound(to: tcmsg.self)
            tcm.pointee.tcm_family = UInt8(AF_UNSPEC)
            tcm.pointee.tcm_ifindex = ifindex
            tcm.pointee.tcm_handle = f.handle
            tcm.pointee.tcm_parent = f.parent.raw
            tcm.pointee.tcm_info = Self.filterInfo(priority: f.priority)
            mnl_attr_put_strz(nlh, UInt16(TCA_KIND), f.kind.kind)
            options(nlh)
        }
    }

    /// Every filter under `parent` on `ifindex` (`tc filter show dev D parent P`), chain heads skipped.
    func filters(ifindex: Int32, device: String, parent: TCHandle) throws -> [ObservedFilter] {
        let req = message(type: UInt16(RTM_GETTFILTER), flags: NLM_F_DUMP) { nlh in
            let tcm = mnl_nlmsg_put_extra_header(nlh, MemoryLayout<tcmsg>.size)!.assumingMemoryBound(to: tcmsg.self)
            tcm.pointee.tcm_family = UInt8(AF_UNSPEC)
            tcm.pointee.tcm_ifindex = ifindex
            tcm.pointee.tcm_parent = parent.raw
        }
        var out: [ObservedFilter] = []
        do {
            try transact(req, "tc filter show dev \(device) parent \(parent)") { nlh in
                guard nlh.pointee.nlmsg_type == UInt16(RTM_NEWTFILTER) else { return }
                let tcm = UnsafeRawPointer(mnl_nlmsg_get_payload(nlh)!).load(as: tcmsg.self)
                guard tcm.tcm_handle != 0 else { return }
                var kind = "?"
                var name: String?
                for attr in NetlinkAttributes(message: nlh, headerSize: MemoryLayout<tcmsg>.size) {
                    switch Int32(mnl_attr_get_type(attr)) {
                    case Int32(TCA_KIND): kind = String(cString: mnl_attr_get_str(attr))
                    case Int32(TCA_OPTIONS) where kind == "bpf":
                        for inner in NetlinkAttributes(nested: attr)
                        where mnl_attr_get_type(inner) == UInt16(TCA_BPF_NAME) {
                            name = String(cString: mnl_attr_get_str(inner))
                        }
                    default: break
                    }
                }
                out.append(
                    ObservedFilter(
                        parent: TCHandle(raw: tcm.tcm_parent), kind: kind,
                        priority: UInt16(tcm.tcm_info >> 16), handle: tcm.tcm_handle, bpfName: name))
            }
        } catch let e as KernelError where e.errno == EINVAL || e.errno == ENOENT {
            // No qdisc with that handle (yet): nothing is attached under it.
            return []
        }
        return out
    }
}
