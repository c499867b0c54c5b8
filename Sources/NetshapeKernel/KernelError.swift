import Glibc
import NetshapeCore

/// Every failure of the kernel layer: what was attempted, on which object, and the kernel's own
/// answer (errno, or libnl's code and text). Callers branch on `code` and `errno`, never on text.
public struct KernelError: KernelFailure, Equatable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public var description: String { rawValue }
        /// A syscall failed (open, setns, mount, write…).
        public static let syscall = Code(rawValue: "syscall")
        /// libnl could not build a request or parse a reply.
        public static let netlink = Code(rawValue: "netlink")
        /// A netlink request failed: the kernel's answer (errno, extended-ACK text) or the socket's.
        public static let netlinkSocket = Code(rawValue: "netlink-socket")
        /// Loading the BPF classifier failed.
        public static let bpf = Code(rawValue: "bpf")
        /// A network namespace or device is missing.
        public static let notFound = Code(rawValue: "not-found")
        /// cgroupfs is not usable (no net_cls, a symlink, a foreign mount).
        public static let cgroup = Code(rawValue: "cgroup")
        /// The machine's state is not what the operation expects.
        public static let state = Code(rawValue: "state")
    }

    public var code: Code
    /// What was attempted, e.g. `setns(/run/netns/web)` or `tc class add dev eth0 classid 1:10`.
    public var operation: String
    /// The errno behind the failure (libnl codes are mapped back to errno where they have one).
    public var errno: Int32?
    /// libnl's `NLE_*` code, when the failure came from libnl.
    public var nlCode: Int32?
    /// The kernel's or library's text for the failure.
    public var reason: String

    public init(_ code: Code, _ operation: String, errno: Int32? = nil, nlCode: Int32? = nil, reason: String) {
        self.code = code
        self.operation = operation
        self.errno = errno
        self.nlCode = nlCode
        self.reason = reason
    }

    /// A failed syscall: keeps `errno` and its strerror text.
    static func syscall(_ operation: String, _ err: Int32) -> KernelError {
        KernelError(.syscall, operation, errno: err, reason: String(cString: strerror(err)))
    }

    public var description: String {
        var s = "\(operation): \(reason)"
        if let e = errno { s += " (errno \(e))" }
        return s
    }
}

/// Runs a syscall-style body, retrying EINTR, and turns -1 into a `KernelError` naming `operation`.
@discardableResult
func sys<T: BinaryInteger>(_ operation: @autoclosure () -> String, _ body: () -> T) throws -> T {
    let (r, e) = sysResult(body)
    if r == -1 { throw KernelError.syscall(operation(), e) }
    return r
}

/// Runs a syscall-style body, retrying EINTR (the one retry loop), and returns its result with the
/// errno read right after it (0 unless the result is -1), for callers to whom some errnos are
/// answers rather than failures (EAGAIN, ENOENT, EEXIST).
func sysResult<T: BinaryInteger>(_ body: () -> T) -> (value: T, errno: Int32) {
    while true {
        let r = body()
        if r != -1 { return (r, 0) }
        let e = Glibc.errno
        if e != EINTR { return (r, e) }
    }
}
