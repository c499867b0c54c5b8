internal import CLibnlRoute
import Glibc
import NetshapeCore

/// What netshape needs to know about a link.
struct LinkInfo {
    var name: String
    var ifindex: Int32
    /// `IFLA_INFO_KIND` ("veth", "ifb", "bridge"…), empty for plain devices.
    var type: String
    /// `IFLA_LINK`: for a veth, the peer's ifindex (in the peer's namespace).
    var peerIfindex: Int32
    /// `IFLA_LINK_NETNSID` is set: the peer lives in another namespace.
    var peerInOtherNamespace: Bool
}

/// Links, addresses and routes: what `provision` and IFB ingress need. Each mutation is named after
/// the `ip` command it stands for and keeps the kernel's errno (`transact`).
extension RouteSocket {
    /// Every link in this socket's namespace.
    func links() throws -> [LinkInfo] {
        let cache = try dump(Self.linkDumpRequest(), "ip link show (in \(namespace))") {
            rtnl_link_alloc_cache(nil, AF_UNSPEC, &$0)
        }
        defer { nl_cache_free(cache) }
        var out: [LinkInfo] = []
        var obj = nl_cache_get_first(cache)
        while let o = obj {
            var nsid: Int32 = 0
            out.append(
                LinkInfo(
                    name: rtnl_link_get_name(o).map { String(cString: $0) } ?? "",
                    ifindex: rtnl_link_get_ifindex(o),
                    type: rtnl_link_get_type(o).map { String(cString: $0) } ?? "",
                    peerIfindex: Int32(rtnl_link_get_link(o)),
                    peerInOtherNamespace: rtnl_link_get_link_netnsid(o, &nsid) == 0))
            obj = nl_cache_get_next(o)
        }
        return out
    }

    /// RTM_GETLINK dump (`struct ifinfomsg`, 16 bytes) asking for VF details as libnl does
    /// (IFLA_EXT_MASK = RTEXT_FILTER_VF).
    static func linkDumpRequest() -> NetlinkMessage {
        dumpRequest(type: RTM_GETLINK, header: 16, attributes: { w in w.attribute(UInt16(IFLA_EXT_MASK), u32: 1) })
    }

    /// Builds with libnl and sends, waiting for the ACK.
    func build(_ op: String, _ make: (inout OpaquePointer?) -> Int32) throws {
        try transact(Self.request(op, make))
    }

    private static func withLink<T>(_ body: (OpaquePointer) throws -> T) throws -> T {
        guard let link = rtnl_link_alloc() else {
            throw KernelError(.netlink, "rtnl_link_alloc", errno: ENOMEM, reason: "out of memory")
        }
        defer { rtnl_link_put(link) }
        return try body(link)
    }

    /// `ip link add name HOST type veth peer name PEER netns <fd>`.
    func createVeth(host: String, peer: String, peerNamespaceFD: Int32) throws {
        guard let link = rtnl_link_veth_alloc() else {
            throw KernelError(.netlink, "rtnl_link_veth_alloc", errno: ENOMEM, reason: "out of memory")
        }
        defer { rtnl_link_put(link) }
        rtnl_link_set_name(link, host)
        if let p = rtnl_link_veth_get_peer(link) {
            rtnl_link_set_name(p, peer)
            rtnl_link_set_ns_fd(p, peerNamespaceFD)
            rtnl_link_put(p)
        }
        try build("ip link add name \(host) type veth peer name \(peer)") {
            rtnl_link_build_add_request(link, NLM_F_CREATE | NLM_F_EXCL, &$0)
        }
    }

    /// `ip link add name NAME [txqueuelen N] up type TYPE` (ifb, bridge). An IFB left at txqueuelen 0
    /// behind an HTB leaf drops everything, so netshape always sets it.
    func createLink(_ name: String, type: String, txqueuelen: UInt32?) throws {
        try Self.withLink { link in
            rtnl_link_set_name(link, name)
            if rtnl_link_set_type(link, type) < 0 {
                throw KernelError(
                    .netlink, "ip link add type \(type)", errno: EOPNOTSUPP, reason: "libnl knows no link type \(type)")
            }
            if let q = txqueuelen { rtnl_link_set_txqlen(link, q) }
            rtnl_link_set_flags(link, 0x1 /* IFF_UP */)
            try build("ip link add name \(name) up type \(type)") {
                rtnl_link_build_add_request(link, NLM_F_CREATE | NLM_F_EXCL, &$0)
            }
        }
    }

    /// `ip link del NAME`.
    func deleteLink(_ name: String) throws {
        try Self.withLink { link in
            rtnl_link_set_name(link, name)
            try build("ip link del \(name)") { rtnl_link_build_delete_request(link, &$0) }
        }
    }

    func requireIfindex(_ name: String) throws -> Int32 {
        guard let i = try ifindex(of: name) else {
            throw KernelError(
                .notFound, "ip link show \(name)", errno: ENODEV,
                reason: "device \(name) does not exist in \(namespace)")
        }
        return i
    }

    /// `ip link set NAME up|down` and `ip link set NAME master BR|nomaster`.
    func setLink(_ name: String, up: Bool? = nil, master: String?? = nil) throws {
        let idx = try requireIfindex(name)
        var masterIdx: Int32?
        if case .some(let m) = master { masterIdx = try m.map(requireIfindex) ?? 0 }
        try transact(Self.setLink(name, ifindex: idx, up: up, masterIfindex: masterIdx))
    }

    /// The request of `setLink` once the names are resolved (`masterIfindex` 0: nomaster).
    static func setLink(_ name: String, ifindex: Int32, up: Bool?, masterIfindex: Int32?) throws -> NetlinkRequest {
        try withLink { link in
            rtnl_link_set_ifindex(link, ifindex)
            if let up { up ? rtnl_link_set_flags(link, 0x1) : rtnl_link_unset_flags(link, 0x1) }
            if let m = masterIfindex { rtnl_link_set_master(link, m) }
            let op =
                "ip link set \(name)\(up.map { $0 ? " up" : " down" } ?? "")\(masterIfindex.map { $0 == 0 ? " nomaster" : " master" } ?? "")"
            return try request(op) { rtnl_link_build_add_request(link, 0, &$0) }
        }
    }

    /// `ip addr add|del CIDR dev NAME`.
    func address(_ cidr: String, device: String, add: Bool) throws {
        try transact(Self.address(cidr, device: device, ifindex: try requireIfindex(device), add: add))
    }

    /// The request of `address` once the device is resolved.
    static func address(_ cidr: String, device: String, ifindex: Int32, add: Bool) throws -> NetlinkRequest {
        guard let a = rtnl_addr_alloc() else {
            throw KernelError(.netlink, "rtnl_addr_alloc", errno: ENOMEM, reason: "out of memory")
        }
        defer { rtnl_addr_put(a) }
        var local: OpaquePointer?
        let rc = nl_addr_parse(cidr, AF_UNSPEC, &local)
        guard rc == 0, let local else { throw Self.nlError("parse address \(cidr)", rc) }
        defer { nl_addr_put(local) }
        rtnl_addr_set_ifindex(a, ifindex)
        _ = rtnl_addr_set_local(a, local)
        rtnl_addr_set_prefixlen(a, Int32(nl_addr_get_prefixlen(local)))
        let op = "ip addr \(add ? "add" : "del") \(cidr) dev \(device)"
        if add {
            return try request(op) { rtnl_addr_build_add_request(a, NLM_F_CREATE | NLM_F_EXCL, &$0) }
        } else {
            return try request(op) { rtnl_addr_build_delete_request(a, 0, &$0) }
        }
    }

    /// `ip route add|del default via GATEWAY`.
    func defaultRoute(via gateway: String, add: Bool) throws {
        var gw: OpaquePointer?
        let rc = nl_addr_parse(gateway, AF_UNSPEC, &gw)
        guard rc == 0, let gw else { throw Self.nlError("parse gateway \(gateway)", rc) }
        defer { nl_addr_put(gw) }
        let family = nl_addr_get_family(gw)
        var dst: OpaquePointer?
        _ = nl_addr_parse(family == AF_INET6 ? "::/0" : "0.0.0.0/0", family, &dst)
        guard let dst else {
            throw KernelError(.netlink, "parse default", reason: "cannot build the default destination")
        }
        defer { nl_addr_put(dst) }
        guard let route = rtnl_route_alloc(), let nh = rtnl_route_nh_alloc() else {
            throw KernelError(.netlink, "rtnl_route_alloc", errno: ENOMEM, reason: "out of memory")
        }
        defer { rtnl_route_put(route) }
        _ = rtnl_route_set_family(route, UInt8(family))
        rtnl_route_set_table(route, 254)
        _ = rtnl_route_set_dst(route, dst)
        rtnl_route_nh_set_gateway(nh, gw)
        rtnl_route_add_nexthop(route, nh)  // the route owns the nexthop from here
        let op = "ip route \(add ? "add" : "del") default via \(gateway)"
        if add {
            try build(op) { rtnl_route_build_add_request(route, NLM_F_CREATE | NLM_F_EXCL, &$0) }
        } else {
            try build(op) { rtnl_route_build_del_request(route, 0, &$0) }
        }
    }

    /// `tc qdisc add dev D handle ffff: ingress` + `tc filter add dev D parent ffff: protocol all prio P
    /// u32 match u32 0 0 action mirred egress redirect dev IFB`. u32 rather than matchall because
    /// u32 is in every kernel (this project's VM kernel has no cls_matchall), as the CNI bandwidth
    /// plugin does. One operation for the caller: if the filter fails, the ingress qdisc goes too.
    func addIngressRedirect(ifindex: Int32, device: String, ifb: String) throws {
        let ifbIndex = try requireIfindex(ifb)
        try transact(Self.ingressQdisc(ifindex: ifindex, device: device))
        do {
            try transact(Self.redirectFilter(ifindex: ifindex, device: device, ifb: ifb, ifbIndex: ifbIndex))
        } catch {
            try? transact(
                Self.deleteQdisc(ifindex: ifindex, device: device, parent: .ingress, handle: TCHandle(raw: 0xFFFF_0000))
            )
            throw error
        }
    }

    /// `tc qdisc add dev D handle ffff: ingress`.
    static func ingressQdisc(ifindex: Int32, device: String) throws -> NetlinkRequest {
        guard let q = rtnl_qdisc_alloc() else {
            throw KernelError(.netlink, "rtnl_qdisc_alloc", errno: ENOMEM, reason: "out of memory")
        }
        defer { rtnl_qdisc_put(q) }
        rtnl_tc_set_ifindex(q, ifindex)
        rtnl_tc_set_parent(q, TCHandle.ingress.raw)
        rtnl_tc_set_handle(q, 0xFFFF_0000)
        _ = rtnl_tc_set_kind(q, "ingress")
        return try request("tc qdisc add dev \(device) handle ffff: ingress") {
            rtnl_qdisc_build_add_request(q, NLM_F_CREATE | NLM_F_EXCL, &$0)
        }
    }

    /// `tc filter add dev D parent ffff: protocol all prio P u32 match u32 0 0 action mirred egress
    /// redirect dev IFB` (IFB's ifindex resolved).
    static func redirectFilter(ifindex: Int32, device: String, ifb: String, ifbIndex: Int32) throws -> NetlinkRequest {
        guard let cls = rtnl_cls_alloc(), let act = rtnl_act_alloc() else {
            throw KernelError(.netlink, "rtnl_cls_alloc", errno: ENOMEM, reason: "out of memory")
        }
        defer { rtnl_cls_put(cls) }
        rtnl_tc_set_ifindex(cls, ifindex)
        rtnl_tc_set_parent(cls, 0xFFFF_0000)
        rtnl_cls_set_prio(cls, FilterSpec.netshapePriority)
        rtnl_cls_set_protocol(cls, 0x0003)  // ETH_P_ALL, host order
        _ = rtnl_tc_set_kind(cls, "u32")
        _ = rtnl_u32_add_key_uint32(cls, 0, 0, 0, 0)  // match u32 0 0: every packet
        _ = rtnl_u32_set_cls_terminal(cls)
        _ = rtnl_tc_set_kind(act, "mirred")
        _ = rtnl_mirred_set_action(act, 1 /* TCA_EGRESS_REDIR */)
        _ = rtnl_mirred_set_policy(act, 4 /* TC_ACT_STOLEN */)
        _ = rtnl_mirred_set_ifindex(act, UInt32(ifbIndex))
        _ = rtnl_u32_add_action(cls, act)  // takes its own reference
        rtnl_act_put(act)
        return try request(
            "tc filter add dev \(device) parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev \(ifb)"
        ) {
            rtnl_cls_build_add_request(cls, NLM_F_CREATE | NLM_F_EXCL, &$0)
        }
    }
}
