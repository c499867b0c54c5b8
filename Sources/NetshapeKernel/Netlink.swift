import Glibc
import NetshapeCore

/// netshape's own netlink layer: a typed message and attribute encoder/decoder, pure and pinned by
/// golden bytes, over a `NetlinkTransport` (the real AF_NETLINK socket, or a replay mock in tests).
/// Every netlink message netshape sends goes through it: the ones libnl-route builds (`RouteSocket`),
/// and the ones libnl has no object for (cls_bpf filters, filter dumps, the proc connector). It
/// replaces libmnl, which Debian ships only as a shared object, so the CNI binary can be linked
/// statically.
///
/// Wire format (linux/netlink.h): every message is a 16-byte `struct nlmsghdr` (len, type, flags,
/// seq, pid; host byte order) and a payload, padded to 4 bytes; attributes are `struct nlattr`
/// (u16 len including the 4-byte header, u16 type) followed by the value, padded to 4 bytes.
enum Netlink {
    /// NLMSG_ALIGN / NLA_ALIGN: messages and attributes start on 4-byte boundaries.
    static func align(_ n: Int) -> Int { (n + 3) & ~3 }

    /// `nlmsg_type` values of the netlink core (linux/netlink.h).
    static let noop: UInt16 = 1
    static let error: UInt16 = 2
    static let done: UInt16 = 3
    static let overrun: UInt16 = 4

    /// `nlmsg_flags` (linux/netlink.h).
    struct Flags: OptionSet, Hashable, Sendable {
        let rawValue: UInt16
        static let request = Flags(rawValue: 0x01)
        static let multi = Flags(rawValue: 0x02)
        static let ack = Flags(rawValue: 0x04)
        /// Send the requester what the request notifies (a tc get answers only this way).
        static let echo = Flags(rawValue: 0x08)
        /// Requests: GET with ROOT|MATCH is a dump.
        static let root = Flags(rawValue: 0x100)
        static let match = Flags(rawValue: 0x200)
        static let dump: Flags = [.root, .match]
        /// New requests: fail if it exists / create if missing.
        static let excl = Flags(rawValue: 0x200)
        static let create = Flags(rawValue: 0x400)
        /// Error replies: the request was cut down to its header / TLVs follow.
        static let capped = Flags(rawValue: 0x100)
        static let ackTLVs = Flags(rawValue: 0x200)
    }

    /// `nla_type` bits (linux/netlink.h): the payload is a nest of attributes.
    static let nestedFlag: UInt16 = 0x8000
    static let byteOrderFlag: UInt16 = 0x4000

    /// `NLMSGERR_ATTR_MSG` (linux/netlink.h): the extended ACK's human-readable text.
    static let errorAttributeMessage: UInt16 = 1
}

/// One netlink message: the header fields and the payload that follows the 16-byte header.
struct NetlinkMessage: Equatable, Sendable {
    var type: UInt16
    var flags: Netlink.Flags
    var seq: UInt32
    /// The sender's port id (0 = the kernel).
    var pid: UInt32
    var payload: [UInt8]

    init(type: UInt16, flags: Netlink.Flags, seq: UInt32 = 0, pid: UInt32 = 0, payload: [UInt8] = []) {
        self.type = type
        self.flags = flags
        self.seq = seq
        self.pid = pid
        self.payload = payload
    }

    /// The message on the wire: header (length included) and payload, padded.
    var bytes: [UInt8] {
        var w = NetlinkWriter()
        w.u32(UInt32(16 + payload.count))
        w.u16(type)
        w.u16(flags.rawValue)
        w.u32(seq)
        w.u32(pid)
        w.raw(payload)
        w.pad()
        return w.bytes
    }

    /// Every message of one datagram. A length that runs past the datagram is an error: the
    /// kernel never sends one, so it means the buffer was cut short.
    static func parse(_ datagram: [UInt8]) throws(NetlinkDecodeError) -> [NetlinkMessage] {
        var out: [NetlinkMessage] = []
        var offset = 0
        while datagram.count - offset >= 16 {
            let r = NetlinkReader(datagram, at: offset)
            let len = Int(r.u32(0))
            guard len >= 16, offset + len <= datagram.count else {
                throw NetlinkDecodeError(
                    "netlink message of length \(len) at offset \(offset) in \(datagram.count) bytes")
            }
            out.append(
                NetlinkMessage(
                    type: r.u16(4), flags: Netlink.Flags(rawValue: r.u16(6)), seq: r.u32(8), pid: r.u32(12),
                    payload: Array(datagram[(offset + 16)..<(offset + len)])))
            offset += Netlink.align(len)
        }
        return out
    }
}

/// A datagram or attribute that does not decode.
struct NetlinkDecodeError: Error, Equatable, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// One attribute (`struct nlattr`): its type without the NESTED/BYTEORDER bits, and its value.
struct NetlinkAttribute: Equatable, Sendable {
    var type: UInt16
    var nested: Bool
    var value: [UInt8]

    init(type: UInt16, nested: Bool = false, value: [UInt8]) {
        self.type = type
        self.nested = nested
        self.value = value
    }

    /// The attributes in `bytes` (a message's payload after its fixed header, or a nest). A
    /// truncated trailing attribute ends the list, as `nla_ok` does in the kernel.
    static func parse(_ bytes: ArraySlice<UInt8>) -> [NetlinkAttribute] {
        var out: [NetlinkAttribute] = []
        var offset = bytes.startIndex
        while bytes.endIndex - offset >= 4 {
            let r = NetlinkReader(Array(bytes[offset..<(offset + 4)]), at: 0)
            let len = Int(r.u16(0))
            let rawType = r.u16(2)
            guard len >= 4, offset + len <= bytes.endIndex else { break }
            out.append(
                NetlinkAttribute(
                    type: rawType & ~(Netlink.nestedFlag | Netlink.byteOrderFlag),
                    nested: rawType & Netlink.nestedFlag != 0, value: Array(bytes[(offset + 4)..<(offset + len)])))
            offset += Netlink.align(len)
        }
        return out
    }

    /// A NUL-terminated string value (`NLA_NUL_STRING`), without the NUL.
    var string: String {
        String(decoding: value.prefix { $0 != 0 }, as: UTF8.self)
    }

    /// A u32 value in host byte order, when the value is exactly 4 bytes.
    var u32: UInt32? {
        value.count == 4 ? NetlinkReader(value, at: 0).u32(0) : nil
    }

    /// The attributes nested inside this one.
    var attributes: [NetlinkAttribute] { Self.parse(value[...]) }
}

/// Appends little-endian (host order on every Linux target Swift supports) fields and attributes.
struct NetlinkWriter {
    private(set) var bytes: [UInt8] = []

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func i32(_ v: Int32) { u32(UInt32(bitPattern: v)) }
    mutating func raw(_ b: [UInt8]) { bytes += b }
    mutating func pad() { bytes += [UInt8](repeating: 0, count: Netlink.align(bytes.count) - bytes.count) }

    /// An attribute with a raw value, padded.
    mutating func attribute(_ type: UInt16, _ value: [UInt8]) {
        u16(UInt16(4 + value.count))
        u16(type)
        raw(value)
        pad()
    }

    mutating func attribute(_ type: UInt16, u32 v: UInt32) {
        var w = NetlinkWriter()
        w.u32(v)
        attribute(type, w.bytes)
    }

    /// A NUL-terminated string attribute (libmnl's `mnl_attr_put_strz`, libnl's `nla_put_string`).
    mutating func attribute(_ type: UInt16, string s: String) { attribute(type, Array(s.utf8) + [0]) }

    /// A nest (`NLA_F_NESTED` set, as `mnl_attr_nest_start` does): `body` writes the inner attributes.
    mutating func nest(_ type: UInt16, _ body: (inout NetlinkWriter) -> Void) {
        var inner = NetlinkWriter()
        body(&inner)
        attribute(type | Netlink.nestedFlag, inner.bytes)
    }
}

/// Reads host-order fields at fixed offsets; out-of-range reads give 0 (callers check lengths).
struct NetlinkReader {
    let bytes: [UInt8]
    let base: Int

    init(_ bytes: [UInt8], at base: Int) {
        self.bytes = bytes
        self.base = base
    }

    func u16(_ at: Int) -> UInt16 {
        guard base + at + 2 <= bytes.count else { return 0 }
        return UInt16(bytes[base + at]) | UInt16(bytes[base + at + 1]) << 8
    }

    func u32(_ at: Int) -> UInt32 { UInt32(u16(at)) | UInt32(u16(at + 2)) << 16 }

    func u64(_ at: Int) -> UInt64 { UInt64(u32(at)) | UInt64(u32(at + 4)) << 32 }
}

/// An `NLMSG_ERROR` reply (`struct nlmsgerr`): the negative errno (0 = ACK) and, when the kernel
/// attached TLVs (NETLINK_EXT_ACK, Linux 4.12+), its explanation.
struct NetlinkAck: Equatable {
    var errno: Int32
    var message: String?

    init?(_ m: NetlinkMessage) {
        guard m.type == Netlink.error, m.payload.count >= 4 else { return nil }
        let r = NetlinkReader(m.payload, at: 0)
        errno = -Int32(bitPattern: r.u32(0))
        message = nil
        guard m.flags.contains(.ackTLVs), m.payload.count >= 4 + 16 else { return }
        // After the error: the offending request, its header only when CAPPED, then the TLVs.
        let innerLen = m.flags.contains(.capped) ? 16 : Int(r.u32(4))
        let tlvs = 4 + Netlink.align(innerLen)
        guard tlvs < m.payload.count else { return }
        message =
            NetlinkAttribute.parse(m.payload[tlvs...]).first { $0.type == Netlink.errorAttributeMessage }?.string
    }
}

/// Sends bytes and receives datagrams of netlink messages: the seam between netshape's netlink
/// code and the kernel (the real socket is `NetlinkSocket`; tests replay captured replies).
protocol NetlinkTransport: AnyObject {
    /// The port id the kernel assigned to this socket (`nlmsg_pid` of its requests' replies).
    var portID: UInt32 { get }
    /// Sends one datagram to the kernel.
    func send(_ bytes: [UInt8]) throws
    /// The messages of the next datagram; nil when none arrived within `timeoutMilliseconds`
    /// (nil timeout: wait as long as it takes).
    func receive(timeoutMilliseconds: Int32?) throws -> [NetlinkMessage]?
}

/// Request/reply over a transport: numbers each request, reads until its ACK (or DONE for a
/// dump), hands every data message to the caller, and turns an error reply into a `KernelError`
/// keeping the kernel's errno and extended-ACK text.
final class NetlinkSession {
    let transport: any NetlinkTransport
    private(set) var seq: UInt32

    /// Sequence numbers start at the clock unless given, as libmnl's examples do, so replies to an
    /// earlier process's requests are never taken for ours.
    init(transport: any NetlinkTransport, firstSeq: UInt32? = nil) {
        self.transport = transport
        self.seq = firstSeq ?? UInt32(truncatingIfNeeded: Int(bitPattern: UInt(time(nil))))
    }

    /// The next sequence number.
    func nextSeq() -> UInt32 {
        seq &+= 1
        return seq
    }

    /// Sends `request` (its seq set here) and collects the replies. `operation` names the request
    /// in errors, e.g. `tc filter del dev eth0 parent 1: …`.
    func transact(
        _ request: NetlinkMessage, _ operation: String, onMessage: (NetlinkMessage) throws -> Void = { _ in }
    ) throws {
        var request = request
        request.seq = nextSeq()
        try transport.send(request.bytes)
        while true {
            guard let messages = try transport.receive(timeoutMilliseconds: nil) else { continue }
            // Replies to other requests (a late ACK of an earlier one, say) are not ours.
            for m in messages where m.seq == request.seq {
                switch m.type {
                case Netlink.done: return
                case Netlink.error: return try Self.outcome(m, operation).get()
                default: try onMessage(m)
                }
            }
        }
    }

    /// An `NLMSG_ERROR` reply as the outcome of the request it answers: success for an ACK, else a
    /// `KernelError` keeping the kernel's errno and extended-ACK text.
    static func outcome(_ m: NetlinkMessage, _ operation: String) -> Result<Void, KernelError> {
        guard let ack = NetlinkAck(m) else {
            return .failure(KernelError(.netlinkSocket, operation, reason: "truncated netlink error reply"))
        }
        if ack.errno == 0 { return .success(()) }
        return .failure(
            KernelError(
                .netlinkSocket, operation, errno: ack.errno,
                reason: ack.message ?? KernelError.syscall(operation, ack.errno).reason))
    }

    /// At most this many requests share one datagram: `tc -batch`'s own limit, which also bounds
    /// the error replies (each echoes its request) that can queue up before they are read.
    static let maxBatchMessages = 128
    /// …and at most this many bytes, well under the default socket buffers (208 KiB).
    static let maxBatchBytes = 64 * 1024

    /// Sends `requests` in as few datagrams as the limits allow, as `tc -batch` does, and reads
    /// until each request of a datagram has its ACK. The kernel handles the messages of a datagram
    /// one after another and answers each, so every result is that request's own: a failure does
    /// not hide what the requests after it did. After a datagram with a failure nothing more is
    /// sent, so the results cover a prefix of `requests` (the rest were not attempted). A socket
    /// error fails the requests of that datagram that had no answer yet.
    func transact(batch requests: [NetlinkRequest]) -> [Result<Void, KernelError>] {
        var results: [Result<Void, KernelError>] = []
        var start = 0
        while start < requests.count {
            var datagram: [UInt8] = []
            var index: [UInt32: Int] = [:]
            var end = start
            while end < requests.count, end - start < Self.maxBatchMessages {
                let len = Netlink.align(16 + requests[end].message.payload.count)
                if end > start, datagram.count + len > Self.maxBatchBytes { break }
                var m = requests[end].message
                m.seq = nextSeq()
                index[m.seq] = end - start
                datagram += m.bytes
                end += 1
            }
            var chunk = [Result<Void, KernelError>?](repeating: nil, count: end - start)
            do {
                try transport.send(datagram)
                var pending = chunk.count
                while pending > 0 {
                    guard let messages = try transport.receive(timeoutMilliseconds: nil) else { continue }
                    for m in messages where m.type == Netlink.error {
                        guard let k = index[m.seq], chunk[k] == nil else { continue }
                        chunk[k] = Self.outcome(m, requests[start + k].operation)
                        pending -= 1
                    }
                }
            } catch {
                let e =
                    error as? KernelError
                    ?? KernelError(.netlinkSocket, "netlink batch", reason: String(describing: error))
                // The socket's error, under each request's own command (its errno once, as a field).
                for k in chunk.indices where chunk[k] == nil {
                    chunk[k] = .failure(
                        KernelError(
                            e.code, requests[start + k].operation, errno: e.errno, reason: "\(e.operation): \(e.reason)"
                        ))
                }
            }
            let outcomes = chunk.map { $0! }
            results += outcomes
            if outcomes.contains(where: \.isFailure) { break }
            start = end
        }
        return results
    }
}
