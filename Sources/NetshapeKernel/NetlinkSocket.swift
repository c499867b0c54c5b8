internal import CNetshapeShim
import Glibc

/// An AF_NETLINK socket (netlink(7)) bound in the calling thread's network namespace: the real
/// `NetlinkTransport`. Every call goes through `sys()`, so failures keep errno and name the socket.
final class NetlinkSocket: NetlinkTransport {
    let fd: Int32
    let portID: UInt32
    /// What the socket is for and where, for error messages: `NETLINK_ROUTE in web`.
    let label: String
    /// Big enough for any single datagram the kernel sends here: dumps are cut into datagrams of
    /// at most 32 KiB (netlink_dump's cap), proc connector events are ~60 bytes each.
    static let receiveBufferSize = 64 * 1024

    /// `socket(AF_NETLINK, SOCK_RAW, proto)` + `bind(nl_pid: pid, nl_groups: groups)`; pid 0 lets
    /// the kernel choose the port id. Extended ACKs (NETLINK_EXT_ACK) are asked for, best effort:
    /// kernels since 4.12 then explain an EINVAL in a text attribute.
    init(protocol proto: Int32, groups: UInt32 = 0, pid: UInt32 = 0, label: String, extendedAck: Bool = true) throws {
        let fd = try sys("socket(AF_NETLINK, \(label))") {
            socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), proto)
        }
        do {
            var addr = sockaddr_nl()
            addr.nl_family = sa_family_t(AF_NETLINK)
            addr.nl_pid = pid
            addr.nl_groups = groups
            try sys("bind(\(label), groups \(groups))") {
                withUnsafePointer(to: &addr) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                    }
                }
            }
            var bound = sockaddr_nl()
            var len = socklen_t(MemoryLayout<sockaddr_nl>.size)
            try sys("getsockname(\(label))") {
                withUnsafeMutablePointer(to: &bound) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
                }
            }
            self.portID = bound.nl_pid
        } catch {
            close(fd)
            throw error
        }
        self.fd = fd
        self.label = label
        if extendedAck { _ = try? setOption(SOL_NETLINK, NETLINK_EXT_ACK, 1, "NETLINK_EXT_ACK") }
    }

    deinit { close(fd) }

    /// `setsockopt(fd, level, name, &value, 4)`.
    func setOption(_ level: Int32, _ name: Int32, _ value: Int32, _ what: String) throws {
        var v = value
        try sys("setsockopt(\(label), \(what))") {
            setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    /// `sendto` the kernel (nl_pid 0). A short send is an error: netlink datagrams are all or nothing.
    func send(_ bytes: [UInt8]) throws {
        var kernel = sockaddr_nl()
        kernel.nl_family = sa_family_t(AF_NETLINK)
        let sent = try sys("sendto(\(label))") {
            bytes.withUnsafeBytes { b in
                withUnsafePointer(to: &kernel) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(fd, b.baseAddress, b.count, 0, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                    }
                }
            }
        }
        guard sent == bytes.count else {
            throw KernelError(
                .netlinkSocket, "sendto(\(label))", errno: EMSGSIZE, reason: "sent \(sent) of \(bytes.count) bytes")
        }
    }

    /// `poll` (when a timeout is given) then `recv(MSG_TRUNC)`, so a datagram larger than the
    /// buffer is reported instead of silently cut. ENOBUFS (the socket overflowed, messages were
    /// lost) is thrown with its errno for the caller to act on.
    func receive(timeoutMilliseconds: Int32?) throws -> [NetlinkMessage]? {
        if let t = timeoutMilliseconds {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if try sys("poll(\(label))", { poll(&pfd, 1, t) }) == 0 { return nil }
        }
        var buf = [UInt8](repeating: 0, count: Self.receiveBufferSize)
        let n = try sys("recv(\(label))") {
            buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_TRUNC)) }
        }
        guard n <= buf.count else {
            throw KernelError(
                .netlinkSocket, "recv(\(label))", errno: ENOSPC,
                reason: "a \(n)-byte datagram does not fit the \(buf.count)-byte buffer")
        }
        do throws(NetlinkDecodeError) {
            return try NetlinkMessage.parse(Array(buf[0..<n]))
        } catch {
            throw KernelError(.netlinkSocket, "recv(\(label))", reason: error.description)
        }
    }
}
