import Glibc

/// A plain blocking TCP client to 127.0.0.1, written against the socket API directly so the
/// metrics endpoint is checked by an implementation other than the one that serves it
/// (NetshapeKernel's TCPSocket). Shared by the unit tests of the HTTP server and the integration
/// tests of the daemon's endpoint.
public final class LoopbackClient: @unchecked Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public let fd: Int32

    /// Connects, with `timeoutSeconds` for every later send and receive (a server that never
    /// answers fails the test instead of hanging it).
    public init(port: UInt16, timeoutSeconds: Int = 10) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: errno \(errno)") }
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = port.bigEndian
        sa.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let r = withUnsafePointer(to: &sa) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        if r != 0 {
            let e = errno
            close(fd)
            throw Failure(description: "connect 127.0.0.1:\(port): errno \(e)")
        }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    @discardableResult
    public func send(_ text: String) -> Int { send(Array(text.utf8)) }

    /// Sends all of `bytes` unless the peer stops taking them; returns how many it took.
    @discardableResult
    public func send(_ bytes: [UInt8]) -> Int {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return off }
            off += n
        }
        return off
    }

    /// Everything until the server closes (or the receive timeout).
    public func readAll() -> String { read { _ in false } }

    /// Reads until the peer closes, or one full response (by Content-Length) has arrived: a
    /// keep-alive connection stays open after it.
    public func response() -> String {
        read { out in
            guard let end = Self.find(Array("\r\n\r\n".utf8), in: out[...]) else { return false }
            let head = out[..<end]
            guard let cl = Self.find(Array("Content-Length: ".utf8), in: head) else { return false }
            let digits = head[(cl + 16)...].prefix { (48...57).contains($0) }
            return Int(String(decoding: digits, as: UTF8.self)).map { out.count >= end + 4 + $0 } ?? false
        }
    }

    /// Where `needle` first starts in `hay` (an index of `hay`).
    private static func find(_ needle: [UInt8], in hay: ArraySlice<UInt8>) -> Int? {
        guard hay.count >= needle.count else { return nil }
        return (hay.startIndex...(hay.endIndex - needle.count)).first {
            hay[$0..<($0 + needle.count)].elementsEqual(needle)
        }
    }

    private func read(until done: ([UInt8]) -> Bool) -> String {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            out += buf[0..<n]
            if done(out) { break }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
