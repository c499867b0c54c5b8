internal import CNetshapeShim
import Glibc

/// A non-blocking TCP socket (the metrics endpoint's listener and its connections). Every call
/// keeps errno and names the address; the descriptor is closed exactly once, by `close()` or deinit.
public final class TCPSocket {
    public let fd: Int32
    /// `HOST:PORT` of the listener, or of the peer for an accepted connection.
    public let name: String
    private var closed = false

    init(fd: Int32, name: String) {
        self.fd = fd
        self.name = name
    }

    deinit { close() }

    public func close() {
        if !closed {
            closed = true
            _ = Glibc.close(fd)
        }
    }

    /// Parses `HOST:PORT` (IPv4 dotted quad, `[IPv6]`, or `localhost`).
    public static func parseAddress(_ text: String) -> (host: String, port: UInt16)? {
        guard let colon = text.lastIndex(of: ":") else { return nil }
        var host = String(text[..<colon])
        guard let port = UInt16(text[text.index(after: colon)...]) else { return nil }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host == "localhost" { host = "127.0.0.1" }
        var v4 = in_addr()
        var v6 = in6_addr()
        guard inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1 else { return nil }
        return (host, port)
    }

    /// Listens on `HOST:PORT` (SO_REUSEADDR, so a restarted daemon binds at once). Port 0 picks one.
    public static func listen(_ address: String, backlog: Int32 = 64) throws -> TCPSocket {
        guard let (host, port) = parseAddress(address) else {
            throw KernelError(
                .state, "listen(\(address))", errno: EINVAL, reason: "not HOST:PORT with a numeric IPv4/IPv6 host")
        }
        let v6 = host.contains(":")
        let fd = try sys("socket(\(address))") {
            socket(
                v6 ? AF_INET6 : AF_INET,
                Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue), 0)
        }
        let s = TCPSocket(fd: fd, name: address)
        var one: Int32 = 1
        try sys("setsockopt(\(address), SO_REUSEADDR)") {
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        if v6 {
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = port.bigEndian
            _ = inet_pton(AF_INET6, host, &sa.sin6_addr)
            try sys("bind(\(address))") {
                withUnsafePointer(to: &sa) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                    }
                }
            }
        } else {
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            sa.sin_port = port.bigEndian
            _ = inet_pton(AF_INET, host, &sa.sin_addr)
            try sys("bind(\(address))") {
                withUnsafePointer(to: &sa) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
            }
        }
        try sys("listen(\(address))") { Glibc.listen(fd, backlog) }
        return s
    }

    /// The port actually bound (for port 0).
    public func localPort() throws -> UInt16 {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        try sys("getsockname(\(name))") {
            withUnsafeMutablePointer(to: &ss) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
            }
        }
        return withUnsafePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
        }
    }

    /// Accepts one pending connection (non-blocking); nil when none is waiting.
    public func accept() throws -> TCPSocket? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let (c, e) = sysResult {
            withUnsafeMutablePointer(to: &ss) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { netshape_accept_nonblock(fd, $0, &len) }
            }
        }
        if c >= 0 { return TCPSocket(fd: c, name: Self.describe(ss)) }
        switch e {
        // A connection that was reset before accept, or a transient shortage: try again later.
        case EAGAIN, EWOULDBLOCK, ECONNABORTED, EPROTO, EMFILE, ENFILE, ENOBUFS, ENOMEM: return nil
        default: throw KernelError.syscall("accept(\(name))", e)
        }
    }

    private static func describe(_ ss: sockaddr_storage) -> String {
        var copy = ss
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        if Int32(ss.ss_family) == AF_INET6 {
            return withUnsafePointer(to: &copy) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in
                    var a = p.pointee.sin6_addr
                    inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count))
                    return
                        "[\(String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))]:\(UInt16(bigEndian: p.pointee.sin6_port))"
                }
            }
        }
        return withUnsafePointer(to: &copy) {
            $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { p in
                var a = p.pointee.sin_addr
                inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count))
                return
                    "\(String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)):\(UInt16(bigEndian: p.pointee.sin_port))"
            }
        }
    }

    public enum IO: Equatable {
        /// This many bytes moved.
        case bytes(Int)
        /// Nothing now; poll again.
        case wouldBlock
        /// The peer closed (read) or the connection is gone (write: EPIPE, ECONNRESET).
        case closed
    }

    /// Reads up to `max` bytes into `buffer` (appended).
    public func read(into buffer: inout [UInt8], max: Int) throws -> IO {
        var chunk = [UInt8](repeating: 0, count: max)
        let (n, e) = sysResult { chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) } }
        if n > 0 {
            buffer.append(contentsOf: chunk[0..<n])
            return .bytes(n)
        }
        if n == 0 { return .closed }
        return try Self.outcome(e, "recv(\(name))")
    }

    /// Writes what the socket takes now of `bytes[offset...]` (MSG_NOSIGNAL: no SIGPIPE).
    public func write(_ bytes: [UInt8], from offset: Int) throws -> IO {
        let (n, e) = sysResult {
            bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
        }
        if n >= 0 { return .bytes(n) }
        return try Self.outcome(e, "send(\(name))")
    }

    /// What a failed non-blocking recv or send means for the connection.
    private static func outcome(_ e: Int32, _ operation: String) throws -> IO {
        switch e {
        case EAGAIN, EWOULDBLOCK: return .wouldBlock
        case ECONNRESET, EPIPE, ETIMEDOUT: return .closed
        default: throw KernelError.syscall(operation, e)
        }
    }
}

/// One descriptor's interest and readiness for `Poller.wait`.
public struct PollEntry {
    public var fd: Int32
    public var wantRead: Bool
    public var wantWrite: Bool
    public var readable = false
    public var writable = false
    /// Error or hang-up: the descriptor is done.
    public var failed = false

    public init(fd: Int32, wantRead: Bool, wantWrite: Bool) {
        self.fd = fd
        self.wantRead = wantRead
        self.wantWrite = wantWrite
    }
}

public enum Poller {
    /// poll(2) over `entries`, at most `timeoutMilliseconds`; EINTR counts as a timeout (the
    /// caller's loop re-checks its deadlines anyway).
    public static func wait(_ entries: inout [PollEntry], timeoutMilliseconds: Int32) throws {
        var pfds = entries.map {
            pollfd(fd: $0.fd, events: Int16(($0.wantRead ? POLLIN : 0) | ($0.wantWrite ? POLLOUT : 0)), revents: 0)
        }
        let r = poll(&pfds, nfds_t(pfds.count), timeoutMilliseconds)
        if r < 0 {
            let e = errno
            if e == EINTR { return }
            throw KernelError.syscall("poll(\(pfds.count) descriptor(s))", e)
        }
        for i in entries.indices {
            let ev = Int32(pfds[i].revents)
            entries[i].readable = ev & Int32(POLLIN) != 0
            entries[i].writable = ev & Int32(POLLOUT) != 0
            entries[i].failed =
                ev & Int32(POLLERR | POLLNVAL) != 0
                || (ev & Int32(POLLHUP) != 0 && ev & Int32(POLLIN) == 0)
        }
    }

    /// CLOCK_MONOTONIC in milliseconds, for deadlines.
    public static func nowMilliseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    /// CLOCK_REALTIME in seconds since the epoch (Prometheus timestamps).
    public static func realtimeSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
