internal import CLibnlRoute
import Glibc
import NetshapeCore

/// The tc verb of a mutation; the netlink flags follow from it in this one place
/// (as in iproute2's `tc/tc_qdisc.c`): add = CREATE|EXCL, replace = CREATE|REPLACE, change = 0.
enum TCVerb: String {
    case add, change, replace

    var flags: Int32 {
        switch self {
        case .add: return NLM_F_CREATE | NLM_F_EXCL
        case .replace: return NLM_F_CREATE | NLM_F_REPLACE
        case .change: return 0
        }
    }
}

/// One netlink request ready to send: the message (seq and pid filled in when it is sent) and the
/// command it stands for, which names it in errors.
struct NetlinkRequest: Equatable {
    var message: NetlinkMessage
    var operation: String
}

/// rtnetlink requests in one network namespace (the socket is opened inside it by
/// `NetworkNamespace.run`), over a `NetlinkTransport`.
///
/// libnl-route builds the messages (`rtnl_*_build_*_request`) and parses dump replies into its
/// objects (`nl_cache_parse_and_add`), but never touches a socket: every byte goes through
/// netshape's `NetlinkSession`, so the kernel's errno and extended-ACK text survive, tests replay
/// captured replies, and many requests can share one datagram (`NetlinkSession.transact(batch:)`).
final class RouteSocket {
    let session: NetlinkSession
    let namespace: String

    /// A NETLINK_ROUTE socket in the calling thread's namespace.
    convenience init(namespace: String) throws {
        let socket = try NetlinkSocket(protocol: NETLINK_ROUTE, label: "NETLINK_ROUTE in \(namespace)")
        self.init(session: NetlinkSession(transport: socket), namespace: namespace)
    }

    init(session: NetlinkSession, namespace: String) {
        self.session = session
        self.namespace = namespace
    }

    static func nlError(_ op: String, _ rc: Int32) -> KernelError {
        let code = abs(rc)
        let text = String(cString: nl_geterror(rc))
        let map: [Int32: Int32] = [
            6: EEXIST, 7: EINVAL, 10: EOPNOTSUPP, 12: ENOENT, 25: EBUSY, 27: EACCES, 28: EPERM, 31: ENODEV,
            5: ENOMEM, 8: ERANGE,
        ]
        return KernelError(.netlink, op, errno: map[code], nlCode: code, reason: text)
    }

    // MARK: - Messages built by libnl, sent by netshape

    /// The request libnl's builder `make` produces, copied out of its `nl_msg` (freed here), with
    /// REQUEST|ACK set as `nl_send_auto` would.
    static func request(_ op: String, _ make: (inout OpaquePointer?) -> Int32) throws -> NetlinkRequest {
        var msg: OpaquePointer?
        let rc = make(&msg)
        guard rc == 0, let msg else { throw nlError(op, rc) }
        defer { nlmsg_free(msg) }
        let hdr = nlmsg_hdr(msg)!
        let bytes = Array(UnsafeRawBufferPointer(start: hdr, count: Int(hdr.pointee.nlmsg_len)))
        guard var m = try? NetlinkMessage.parse(bytes).first else {
            throw KernelError(.netlink, op, errno: EINVAL, reason: "libnl built a message that does not parse")
        }
        m.flags.formUnion([.request, .ack])
        return NetlinkRequest(message: m, operation: op)
    }

    /// Sends one request and waits for its ACK.
    func transact(_ r: NetlinkRequest) throws { try session.transact(r.message, r.operation) }

    /// Sends a dump request and parses every reply into the libnl cache `alloc` makes (one of the
    /// `rtnl_*_alloc_cache` functions, given no socket: it then only allocates; calling them, not
    /// `nl_cache_alloc_name`, keeps their cache types linked into the static CNI binary). The
    /// caller frees the cache.
    func dump(_ request: NetlinkMessage, _ op: String, alloc: (inout OpaquePointer?) -> Int32) throws -> OpaquePointer {
        var cache: OpaquePointer?
        let rc = alloc(&cache)
        guard rc == 0, let cache else { throw Self.nlError("\(op): allocate its cache", rc) }
        do {
            try session.transact(request, op) { m in
                var bytes = m.bytes
                let parsed = bytes.withUnsafeMutableBytes { b -> Int32 in
                    guard let msg = nlmsg_convert(b.baseAddress!.assumingMemoryBound(to: nlmsghdr.self)) else {
                        return -Int32(NLE_NOMEM)
                    }
                    defer { nlmsg_free(msg) }
                    return nl_cache_parse_and_add(cache, msg)
                }
                // libnl keys IPv6 routes without their device (it merges them into multipath routes
                // when it reads a dump itself), so the fe80::/64 route of a second device is
                // refused as existing: the first one is kept, as for any duplicate.
                if parsed < 0 && parsed != -Int32(NLE_EXIST) { throw Self.nlError("\(op): parse reply", parsed) }
            }
        } catch {
            nl_cache_free(cache)
            throw error
        }
        return cache
    }

    /// A dump request with a fixed header of `header` bytes (zeroes but for what `fill` writes; it
    /// must leave `header` bytes) and `attributes`.
    static func dumpRequest(
        type: Int, header: Int, fill: (inout [UInt8]) -> Void = { _ in },
        attributes: (inout NetlinkWriter) -> Void = { _ in }
    ) -> NetlinkMessage {
        var fixed = [UInt8](repeating: 0, count: header)
        fill(&fixed)
        var w = NetlinkWriter()
        w.raw(fixed)
        attributes(&w)
        return NetlinkMessage(type: UInt16(type), flags: [.request, .ack, .dump], payload: w.bytes)
    }

    // MARK: - Links and routes

    /// ifindex of `name`, or nil when no such device exists.
    func ifindex(of name: String) throws -> Int32? {
        try links().first { $0.name == name }?.ifindex
    }

    /// Name of `ifindex`.
    func name(of ifindex: Int32) throws -> String? {
        try links().first { $0.ifindex == ifindex }?.name
    }

    /// ifindex of the device the main table's default route leaves through (IPv4, then IPv6).
    func defaultRouteIfindex() throws -> Int32? {
        for family in [AF_INET, AF_INET6] {
            let cache = try dump(Self.routeDumpRequest(family: family), "ip route show (in \(namespace))") {
                rtnl_route_alloc_cache(nil, family, 0, &$0)
            }
            defer { nl_cache_free(cache) }
            var obj = nl_cache_get_first(cache)
            while let o = obj {
                let route = o
                if rtnl_route_get_table(route) == 254 /* RT_TABLE_MAIN */,
                    let dst = rtnl_route_get_dst(route), nl_addr_get_prefixlen(dst) == 0,
                    rtnl_route_get_nnexthops(route) > 0, let nh = rtnl_route_nexthop_n(route, 0)
                {
                    let idx = rtnl_route_nh_get_ifindex(nh)
                    if idx > 0 { return idx }
                }
                obj = nl_cache_get_next(o)
            }
        }
        return nil
    }

    // MARK: - Dumps

    static func stats(_ tc: OpaquePointer) -> TCStats {
        TCStats(
            bytes: rtnl_tc_get_stat(tc, RTNL_TC_BYTES), packets: rtnl_tc_get_stat(tc, RTNL_TC_PACKETS),
            drops: rtnl_tc_get_stat(tc, RTNL_TC_DROPS), overlimits: rtnl_tc_get_stat(tc, RTNL_TC_OVERLIMITS),
            backlogBytes: rtnl_tc_get_stat(tc, RTNL_TC_BACKLOG))
    }

    /// Every qdisc on `ifindex` (`tc -s qdisc show dev D`).
    func qdiscs(ifindex: Int32, device: String) throws -> [ObservedQdisc] {
        let cache = try dump(Self.qdiscDumpRequest(), "tc qdisc show dev \(device)") {
            rtnl_qdisc_alloc_cache(nil, &$0)
        }
        defer { nl_cache_free(cache) }
        var out: [ObservedQdisc] = []
        var obj = nl_cache_get_first(cache)
        while let o = obj {
            let q = o
            if rtnl_tc_get_ifindex(q) == ifindex {
                let kind = rtnl_tc_get_kind(q).map { String(cString: $0) } ?? "?"
                var seen = ObservedQdisc(
                    handle: TCHandle(raw: rtnl_tc_get_handle(q)),
                    parent: TCHandle(raw: rtnl_tc_get_parent(q)), kind: kind,
                    stats: Self.stats(q))
                switch kind {
                case "htb": seen.htbDefault = UInt16(truncatingIfNeeded: rtnl_htb_get_defcls(q))
                case "bfifo": seen.queue = .bfifo(limit: UInt32(clamping: rtnl_qdisc_fifo_get_limit(q)))
                case "pfifo": seen.queue = .pfifo(limit: UInt32(clamping: rtnl_qdisc_fifo_get_limit(q)))
                case "fq_codel": seen.queue = .fqCodel
                case "sfq": seen.queue = .sfq
                default: break
                }
                out.append(seen)
            }
            obj = nl_cache_get_next(o)
        }
        return out
    }

    /// Every HTB class on `ifindex` (`tc -s class show dev D`).
    func classes(ifindex: Int32, device: String) throws -> [ObservedClass] {
        let cache = try dump(Self.classDumpRequest(ifindex: ifindex), "tc class show dev \(device)") {
            rtnl_class_alloc_cache(nil, ifindex, &$0)
        }
        defer { nl_cache_free(cache) }
        return Self.htbClasses(in: cache)
    }

    /// The HTB classes among `ids` on `ifindex` (one missing is left out). A few are asked one
    /// by one (RTM_GETTCLASS without NLM_F_DUMP: the kernel answers with that class alone); more
    /// than `singleGets` in one dump of the device, which then costs less than the round trips.
    func classes(ifindex: Int32, device: String, only ids: Set<TCHandle>) throws -> [ObservedClass] {
        guard ids.count <= Self.singleGets else {
            return try classes(ifindex: ifindex, device: device).filter { ids.contains($0.spec.classid) }
        }
        var out: [ObservedClass] = []
        for id in ids.sorted() {
            let cache: OpaquePointer
            do {
                cache = try dump(
                    Self.classGetRequest(ifindex: ifindex, classid: id), "tc class get dev \(device) classid \(id)"
                ) {
                    rtnl_class_alloc_cache(nil, ifindex, &$0)
                }
            } catch let e as KernelError where e.errno == ENOENT {
                continue
            } catch is KernelError {
                // Refused for another reason (EINVAL: the root qdisc is classless now): the dump
                // reads the device as the whole read-back would, or names its own fault.
                return try classes(ifindex: ifindex, device: device).filter { ids.contains($0.spec.classid) }
            }
            defer { nl_cache_free(cache) }
            out += Self.htbClasses(in: cache).filter { $0.spec.classid == id }
        }
        return out
    }

    static let singleGets = 16

    /// RTM_GETTCLASS of one class (`tc_ctl_tclass` finds it by its handle on the device). The
    /// kernel answers a tc get as a notification (`tclass_get_notify` → `rtnetlink_send`): to the
    /// requester only with NLM_F_ECHO, else the ACK comes alone; either way every RTNLGRP_TC
    /// listener (`tc monitor`) sees it as an RTM_NEWTCLASS of that class.
    static func classGetRequest(ifindex: Int32, classid: TCHandle) -> NetlinkMessage {
        var w = NetlinkWriter()
        TCMessage(ifindex: ifindex, handle: classid.raw, parent: .unspecified).write(into: &w)
        return NetlinkMessage(type: UInt16(RTM_GETTCLASS), flags: [.request, .ack, .echo], payload: w.bytes)
    }

    /// The HTB classes of a libnl class cache.
    static func htbClasses(in cache: OpaquePointer) -> [ObservedClass] {
        var out: [ObservedClass] = []
        var obj = nl_cache_get_first(cache)
        while let o = obj {
            let c = o
            if let k = rtnl_tc_get_kind(c), String(cString: k) == "htb" {
                var rate: UInt64 = 0
                var ceil: UInt64 = 0
                _ = rtnl_htb_get_rate64(c, &rate)
                _ = rtnl_htb_get_ceil64(c, &ceil)
                let classid = TCHandle(raw: rtnl_tc_get_handle(c))
                // Root classes are created under the qdisc (`parent 1:`) but dumped with parent
                // TC_H_ROOT (sch_htb.c, htb_dump_class): normalise to the form they are created with.
                var parent = TCHandle(raw: rtnl_tc_get_parent(c))
                if parent == .root { parent = classid.qdisc }
                let spec = HTBClassSpec(
                    classid: classid, parent: parent,
                    rate: Rate(bytesPerSecond: rate), ceil: Rate(bytesPerSecond: ceil),
                    burst: Size(bytes: UInt64(rtnl_htb_get_rbuffer(c))),
                    cburst: Size(bytes: UInt64(rtnl_htb_get_cbuffer(c))),
                    priority: rtnl_htb_get_prio(c), quantum: rtnl_htb_get_quantum(c))
                out.append(ObservedClass(spec: spec, stats: Self.stats(c)))
            }
            obj = nl_cache_get_next(o)
        }
        return out
    }

    /// RTM_GETQDISC dump of every device's qdiscs (as libnl's `rtnl_qdisc_alloc_cache` asks).
    static func qdiscDumpRequest() -> NetlinkMessage {
        dumpRequest(type: RTM_GETQDISC, header: TCMessage.size)
    }

    /// RTM_GETTCLASS dump of the classes on `ifindex` (`tcm_ifindex` names the device).
    static func classDumpRequest(ifindex: Int32) -> NetlinkMessage {
        dumpRequest(type: RTM_GETTCLASS, header: TCMessage.size) { header in
            var w = NetlinkWriter()
            TCMessage(ifindex: ifindex, parent: .unspecified).write(into: &w)
            header = w.bytes
        }
    }

    /// RTM_GETROUTE dump of one family (`struct rtmsg`, 12 bytes, `rtm_family` set).
    static func routeDumpRequest(family: Int32) -> NetlinkMessage {
        dumpRequest(type: RTM_GETROUTE, header: 12) { $0[0] = UInt8(family) }
    }

    // MARK: - Mutations

    /// `tc qdisc add|replace|change dev D root handle M: htb default N`.
    static func htbRoot(_ verb: TCVerb, ifindex: Int32, device: String, _ q: HTBQdiscSpec) throws -> NetlinkRequest {
        return try withQdisc(ifindex: ifindex, parent: .root, handle: q.handle, kind: "htb") { qd in
            _ = rtnl_htb_set_defcls(qd, UInt32(q.defaultMinor))
            _ = rtnl_htb_set_rate2quantum(qd, 10)
            return try request("tc qdisc \(verb) dev \(device) root handle \(q.handle) htb") { msg in
                rtnl_qdisc_build_add_request(qd, verb.flags, &msg)
            }
        }
    }

    /// `tc qdisc del dev D parent P [handle H]`.
    static func deleteQdisc(ifindex: Int32, device: String, parent: TCHandle, handle: TCHandle?) throws
        -> NetlinkRequest
    {
        return try withQdisc(ifindex: ifindex, parent: parent, handle: handle ?? .unspecified, kind: nil) { qd in
            try request("tc qdisc del dev \(device) parent \(parent)") { msg in
                rtnl_qdisc_build_delete_request(qd, &msg)
            }
        }
    }

    /// `tc qdisc add|replace dev D parent C <queue>` (handle chosen by the kernel).
    static func leaf(_ verb: TCVerb, ifindex: Int32, device: String, _ l: LeafQdiscSpec) throws -> NetlinkRequest {
        return try withQdisc(ifindex: ifindex, parent: l.parent, handle: .unspecified, kind: l.queue.kind) { qd in
            switch l.queue {
            case .bfifo(let limit), .pfifo(let limit): _ = rtnl_qdisc_fifo_set_limit(qd, Int32(clamping: limit))
            case .fqCodel, .sfq: break
            }
            return try request("tc qdisc \(verb) dev \(device) parent \(l.parent) \(l.queue)") { msg in
                rtnl_qdisc_build_add_request(qd, verb.flags, &msg)
            }
        }
    }

    /// `tc class add|change dev D parent P classid C htb rate … ceil … burst … cburst … prio … quantum …`.
    static func htbClass(_ verb: TCVerb, ifindex: Int32, device: String, _ c: HTBClassSpec) throws -> NetlinkRequest {
        guard let cls = rtnl_class_alloc() else {
            throw KernelError(.netlink, "rtnl_class_alloc", errno: ENOMEM, reason: "out of memory")
        }
        defer { rtnl_class_put(cls) }
        rtnl_tc_set_ifindex(cls, ifindex)
        rtnl_tc_set_parent(cls, c.parent.raw)
        rtnl_tc_set_handle(cls, c.classid.raw)
        let op = "tc class \(verb) dev \(device) parent \(c.parent) classid \(c.classid) \(c.tcArguments)"
        try check(op, rtnl_tc_set_kind(cls, "htb"))
        try check(op, rtnl_htb_set_rate64(cls, c.rate.bytesPerSecond))
        try check(op, rtnl_htb_set_ceil64(cls, c.ceil.bytesPerSecond))
        try check(op, rtnl_htb_set_rbuffer(cls, UInt32(clamping: c.burst.bytes)))
        try check(op, rtnl_htb_set_cbuffer(cls, UInt32(clamping: c.cburst.bytes)))
        try check(op, rtnl_htb_set_prio(cls, c.priority))
        try check(op, rtnl_htb_set_quantum(cls, c.quantum))
        return try request(op) { msg in rtnl_class_build_add_request(cls, verb.flags, &msg) }
    }

    /// `tc class del dev D classid C`.
    static func deleteClass(ifindex: Int32, device: String, _ c: HTBClassSpec) throws -> NetlinkRequest {
        guard let cls = rtnl_class_alloc() else {
            throw KernelError(.netlink, "rtnl_class_alloc", errno: ENOMEM, reason: "out of memory")
        }
        defer { rtnl_class_put(cls) }
        rtnl_tc_set_ifindex(cls, ifindex)
        rtnl_tc_set_parent(cls, c.parent.raw)
        rtnl_tc_set_handle(cls, c.classid.raw)
        return try request("tc class del dev \(device) classid \(c.classid)") { msg in
            rtnl_class_build_delete_request(cls, &msg)
        }
    }

    /// `tc filter add dev D parent M: protocol all prio P handle H cgroup` (cls_cgroup; the handle is
    /// required, or the kernel answers EINVAL). Filters are deleted by `FilterSocket.deleteFilter`,
    /// whatever their kind.
    static func cgroupFilter(ifindex: Int32, device: String, _ f: FilterSpec) throws -> NetlinkRequest {
        guard let cls = rtnl_cls_alloc() else {
            throw KernelError(.netlink, "rtnl_cls_alloc", errno: ENOMEM, reason: "out of memory")
        }
        defer { rtnl_cls_put(cls) }
        rtnl_tc_set_ifindex(cls, ifindex)
        rtnl_tc_set_parent(cls, f.parent.raw)
        rtnl_tc_set_handle(cls, f.handle)
        rtnl_cls_set_prio(cls, f.priority)
        rtnl_cls_set_protocol(cls, 0x0003)  // ETH_P_ALL, host order: libnl applies htons
        let op =
            "tc filter add dev \(device) parent \(f.parent) protocol all prio \(f.priority) handle \(f.handle) cgroup"
        try check(op, rtnl_tc_set_kind(cls, "cgroup"))
        return try request(op) { msg in rtnl_cls_build_add_request(cls, NLM_F_CREATE | NLM_F_EXCL, &msg) }
    }

    private static func withQdisc<T>(
        ifindex: Int32, parent: TCHandle, handle: TCHandle, kind: String?,
        _ body: (OpaquePointer) throws -> T
    ) throws -> T {
        guard let qd = rtnl_qdisc_alloc() else {
            throw KernelError(.netlink, "rtnl_qdisc_alloc", errno: ENOMEM, reason: "out of memory")
        }
        defer { rtnl_qdisc_put(qd) }
        rtnl_tc_set_ifindex(qd, ifindex)
        rtnl_tc_set_parent(qd, parent.raw)
        rtnl_tc_set_handle(qd, handle.raw)
        if let kind { try check("rtnl_tc_set_kind(\(kind))", rtnl_tc_set_kind(qd, kind)) }
        return try body(qd)
    }

    private static func check(_ op: String, _ rc: Int32) throws {
        if rc < 0 { throw Self.nlError(op, rc) }
    }
}
