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

/// A libnl-route socket bound to one network namespace (opened inside it by `NetworkNamespace.run`).
///
/// Mutations build the message with libnl and read the ACK through a custom error callback, so the
/// kernel's errno survives (libnl's own calls fold it into coarser `NLE_*` codes).
final class RouteSocket {
    let sock: OpaquePointer
    let namespace: String

    /// Opens and connects a NETLINK_ROUTE socket in the calling thread's namespace.
    init(namespace: String) throws {
        guard let s = nl_socket_alloc() else {
            throw KernelError(.netlink, "nl_socket_alloc", errno: ENOMEM, reason: "out of memory")
        }
        let rc = nl_connect(s, NETLINK_ROUTE)
        guard rc == 0 else {
            nl_socket_free(s)
            throw Self.nlError("nl_connect(NETLINK_ROUTE) in \(namespace)", rc)
        }
        self.sock = s
        self.namespace = namespace
    }

    deinit { nl_socket_free(sock) }

    static func nlError(_ op: String, _ rc: Int32) -> KernelError {
        let code = abs(rc)
        let text = String(cString: nl_geterror(rc))
        let map: [Int32: Int32] = [
            6: EEXIST, 7: EINVAL, 10: EOPNOTSUPP, 12: ENOENT, 25: EBUSY, 27: EACCES, 28: EPERM, 31: ENODEV,
            5: ENOMEM, 8: ERANGE,
        ]
        return KernelError(.netlink, op, errno: map[code], nlCode: code, reason: text)
    }

    // MARK: - Sending with the kernel's errno

    final class AckState {
        var errno: Int32 = 0
        var done = false
    }

    /// Sends `msg` (consumed) and waits for the kernel's ACK; throws with the kernel's errno.
    func transact(_ msg: OpaquePointer, _ op: String) throws {
        defer { nlmsg_free(msg) }
        let sent = nl_send_auto(sock, msg)
        guard sent >= 0 else { throw Self.nlError(op, sent) }
        let state = AckState()
        guard let cb = nl_cb_alloc(NL_CB_DEFAULT) else {
            throw KernelError(.netlink, op, errno: ENOMEM, reason: "nl_cb_alloc failed")
        }
        defer { nl_cb_put(cb) }
        let ctx = Unmanaged.passUnretained(state).toOpaque()
        nl_cb_err(
            cb, NL_CB_CUSTOM,
            { _, err, arg in
                let st = Unmanaged<AckState>.fromOpaque(arg!).takeUnretainedValue()
                st.errno = -(err?.pointee.error ?? -Int32(EIO))
                st.done = true
                return Int32(NL_STOP.rawValue)
            }, ctx)
        nl_cb_set(
            cb, NL_CB_ACK, NL_CB_CUSTOM,
            { _, arg in
                let st = Unmanaged<AckState>.fromOpaque(arg!).takeUnretainedValue()
                st.done = true
                return Int32(NL_STOP.rawValue)
            }, ctx)
        while !state.done {
            let rc = nl_recvmsgs(sock, cb)
            if state.done { break }
            if rc < 0 { throw Self.nlError(op, rc) }
        }
        if state.errno != 0 {
            throw KernelError(.netlink, op, errno: state.errno, reason: String(cString: strerror(state.errno)))
        }
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
            var cache: OpaquePointer?
            let rc = rtnl_route_alloc_cache(sock, family, 0, &cache)
            guard rc == 0, let cache else { throw Self.nlError("ip route show (in \(namespace))", rc) }
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
        var cache: OpaquePointer?
        let rc = rtnl_qdisc_alloc_cache(sock, &cache)
        guard rc == 0, let cache else { throw Self.nlError("tc qdisc show dev \(device)", rc) }
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
        var cache: OpaquePointer?
        let rc = rtnl_class_alloc_cache(sock, ifindex, &cache)
        guard rc == 0, let cache else { throw Self.nlError("tc class show dev \(device)", rc) }
        defer { nl_cache_free(cache) }
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

    // MARK: - Mutations

    /// `tc qdisc add|replace|change dev D root handle M: htb default N`.
    func htbRoot(_ verb: TCVerb, ifindex: Int32, device: String, _ q: HTBQdiscSpec) throws {
        try withQdisc(ifindex: ifindex, parent: .root, handle: q.handle, kind: "htb") { qd in
            _ = rtnl_htb_set_defcls(qd, UInt32(q.defaultMinor))
            _ = rtnl_htb_set_rate2quantum(qd, 10)
            return try build("tc qdisc \(verb) dev \(device) root handle \(q.handle) htb") { msg in
                rtnl_qdisc_build_add_request(qd, verb.flags, &msg)
            }
        }
    }

    /// `tc qdisc del dev D parent P [handle H]`.
    func deleteQdisc(ifindex: Int32, device: String, parent: TCHandle, handle: TCHandle?) throws {
        try withQdisc(ifindex: ifindex, parent: parent, handle: handle ?? .unspecified, kind: nil) { qd in
            try build("tc qdisc del dev \(device) parent \(parent)") { msg in
                rtnl_qdisc_build_delete_request(qd, &msg)
            }
        }
    }

    /// `tc qdisc add|replace dev D parent C <queue>` (handle chosen by the kernel).
    func leaf(_ verb: TCVerb, ifindex: Int32, device: String, _ l: LeafQdiscSpec) throws {
        try withQdisc(ifindex: ifindex, parent: l.parent, handle: .unspecified, kind: l.queue.kind) { qd in
            switch l.queue {
            case .bfifo(let limit), .pfifo(let limit): _ = rtnl_qdisc_fifo_set_limit(qd, Int32(clamping: limit))
            case .fqCodel, .sfq: break
            }
            return try build("tc qdisc \(verb) dev \(device) parent \(l.parent) \(l.queue)") { msg in
                rtnl_qdisc_build_add_request(qd, verb.flags, &msg)
            }
        }
    }

    /// `tc class add|change dev D parent P classid C htb rate … ceil … burst … cburst … prio … quantum …`.
    func htbClass(_ verb: TCVerb, ifindex: Int32, device: String, _ c: HTBClassSpec) throws {
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
        try build(op) { msg in rtnl_class_build_add_request(cls, verb.flags, &msg) }
    }

    /// `tc class del dev D classid C`.
    func deleteClass(ifindex: Int32, device: String, _ c: HTBClassSpec) throws {
        guard let cls = rtnl_class_alloc() else {
            throw KernelError(.netlink, "rtnl_class_alloc", errno: ENOMEM, reason: "out of memory")
        }
        defer { rtnl_class_put(cls) }
        rtnl_tc_set_ifindex(cls, ifindex)
        rtnl_tc_set_parent(cls, c.parent.raw)
        rtnl_tc_set_handle(cls, c.classid.raw)
        try build("tc class del dev \(device) classid \(c.classid)") { msg in rtnl_class_build_delete_request(cls, &msg)
        }
    }

    /// `tc filter add dev D parent M: protocol all prio P handle H cgroup` (cls_cgroup; the handle is
    /// required, or the kernel answers EINVAL).
    func cgroupFilter(add: Bool, ifindex: Int32, device: String, _ f: FilterSpec) throws {
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
            "tc filter \(add ? "add" : "del") dev \(device) parent \(f.parent) protocol all prio \(f.priority) handle \(f.handle) cgroup"
        try check(op, rtnl_tc_set_kind(cls, "cgroup"))
        if add {
            try build(op) { msg in rtnl_cls_build_add_request(cls, NLM_F_CREATE | NLM_F_EXCL, &msg) }
        } else {
            try build(op) { msg in rtnl_cls_build_delete_request(cls, 0, &msg) }
        }
    }

    private func withQdisc<T>(
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

    /// Builds a message with libnl and sends it, keeping the kernel's errno (`transact`).
    func build(_ op: String, _ make: (inout OpaquePointer?) -> Int32) throws {
        var msg: OpaquePointer?
        let rc = make(&msg)
        guard rc == 0, let msg else { throw Self.nlError(op, rc) }
        try transact(msg, op)
    }

    private func check(_ op: String, _ rc: Int32) throws {
        if rc < 0 { throw Self.nlError(op, rc) }
    }
}
