internal import CLibmnl
internal import CNetshapeShim
import Glibc

/// A process event from the kernel's proc connector, as netshape uses them.
public enum ProcEvent: Sendable, Equatable {
    /// The process (thread group `tgid`) called execve: its comm, exe and cmdline changed.
    case exec(tgid: Int32, timestampNS: UInt64)
    /// Its uid or gid changed (setuid, setgid): `user`/`group` rules may now match.
    case identity(tgid: Int32, timestampNS: UInt64)
    /// It renamed itself (prctl PR_SET_NAME): `comm` rules may now match.
    case comm(tgid: Int32, timestampNS: UInt64)
}

/// What one read of the connector gave.
public enum ProcConnectorRead: Sendable, Equatable {
    case events([ProcEvent])
    /// Nothing arrived before the timeout.
    case timeout
    /// The socket buffer overflowed (ENOBUFS): events were lost, the caller must rescan /proc.
    case overflow
}

/// The netlink proc connector (`NETLINK_CONNECTOR`, `CN_IDX_PROC`): exec, uid/gid and comm events
/// for every process on the machine, the way cgrulesengd learns of new processes. It only exists
/// in the initial network namespace and needs CAP_NET_ADMIN.
public final class ProcConnector {
    let nl: OpaquePointer

    /// `what` values of `struct proc_event` (linux/cn_proc.h).
    static let execEvent: UInt32 = 0x0000_0002
    static let uidEvent: UInt32 = 0x0000_0004
    static let gidEvent: UInt32 = 0x0000_0040
    static let commEvent: UInt32 = 0x0000_0200

    /// Opens the connector and subscribes (`PROC_CN_MCAST_LISTEN`).
    public init() throws {
        guard let nl = mnl_socket_open(Int32(NETLINK_CONNECTOR)) else {
            throw KernelError.syscall("socket(NETLINK_CONNECTOR)", errno)
        }
        self.nl = nl
        // A large receive buffer absorbs fork/exec storms; SO_RCVBUFFORCE passes the sysctl limit
        // (CAP_NET_ADMIN), plain SO_RCVBUF is the fallback.
        var size: Int32 = 8 << 20
        let fd = mnl_socket_get_fd(nl)
        if setsockopt(fd, SOL_SOCKET, 33 /* SO_RCVBUFFORCE */, &size, 4) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, 4)
        }
        guard mnl_socket_bind(nl, UInt32(CN_IDX_PROC), pid_t(getpid())) == 0 else {
            let e = errno
            mnl_socket_close(nl)
            throw KernelError.syscall("bind(NETLINK_CONNECTOR, CN_IDX_PROC)", e)
        }
        let msg = Self.subscribeMessage(listen: true, portid: mnl_socket_get_portid(nl))
        let sent = msg.withUnsafeBytes { mnl_socket_sendto(nl, $0.baseAddress, $0.count) }
        guard sent == msg.count else {
            let e = errno
            mnl_socket_close(nl)
            throw KernelError.syscall("proc connector subscribe (PROC_CN_MCAST_LISTEN)", e)
        }
    }

    deinit {
        let msg = Self.subscribeMessage(listen: false, portid: mnl_socket_get_portid(nl))
        _ = msg.withUnsafeBytes { mnl_socket_sendto(nl, $0.baseAddress, $0.count) }
        mnl_socket_close(nl)
    }

    /// nlmsghdr + cn_msg {idx CN_IDX_PROC, val CN_VAL_PROC, len 4} + enum proc_cn_mcast_op.
    static func subscribeMessage(listen: Bool, portid: UInt32) -> [UInt8] {
        var b: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
        func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
        u32(16 + 20 + 4)  // nlmsg_len
        u16(UInt16(NLMSG_DONE))  // nlmsg_type: the connector takes a single "done" message
        u16(0)  // nlmsg_flags
        u32(0)  // nlmsg_seq
        u32(portid)  // nlmsg_pid
        u32(UInt32(CN_IDX_PROC))  // cn_msg.id.idx
        u32(UInt32(CN_VAL_PROC))  // cn_msg.id.val
        u32(0)  // seq
        u32(0)  // ack
        u16(4)  // len
        u16(0)  // flags
        u32(listen ? 1 : 2)  // PROC_CN_MCAST_LISTEN / PROC_CN_MCAST_IGNORE
        return b
    }

    /// Waits up to `timeoutMilliseconds` for events.
    public func next(timeoutMilliseconds: Int32) throws -> ProcConnectorRead {
        var pfd = pollfd(fd: mnl_socket_get_fd(nl), events: Int16(POLLIN), revents: 0)
        let r = poll(&pfd, 1, timeoutMilliseconds)
        if r == 0 || (r < 0 && errno == EINTR) { return .timeout }
        if r < 0 { throw KernelError.syscall("poll(proc connector)", errno) }
        var buf = [UInt8](repeating: 0, count: 16 * 1024)
        let n = buf.withUnsafeMutableBytes { mnl_socket_recvfrom(nl, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == ENOBUFS { return .overflow }
            if errno == EINTR || errno == EAGAIN { return .timeout }
            throw KernelError.syscall("recv(proc connector)", errno)
        }
        return .events(Self.parse(Array(buf[0..<n])))
    }

    /// Events in one datagram: nlmsghdr, cn_msg, then struct proc_event
    /// { u32 what; u32 cpu; u64 timestamp_ns; union { … { pid, tgid } … } }.
    public static func parse(_ bytes: [UInt8]) -> [ProcEvent] {
        var out: [ProcEvent] = []
        var offset = 0
        func u32(_ at: Int) -> UInt32 {
            bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt32.self) }
        }
        while offset + 16 <= bytes.count {
            let len = Int(u32(offset))
            guard len >= 16, offset + len <= bytes.count else { break }
            let event = offset + 16 + 20
            if event + 24 <= offset + len {
                let what = u32(event)
                let ts = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: event + 8, as: UInt64.self) }
                let tgid = Int32(bitPattern: u32(event + 20))
                switch what {
                case execEvent: out.append(.exec(tgid: tgid, timestampNS: ts))
                case uidEvent, gidEvent: out.append(.identity(tgid: tgid, timestampNS: ts))
                case commEvent: out.append(.comm(tgid: tgid, timestampNS: ts))
                default: break
                }
            }
            offset += (len + 3) & ~3
        }
        return out
    }

    /// CLOCK_MONOTONIC in nanoseconds: the clock of `timestamp_ns` (ktime_get_ns).
    public static func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

/// Watches directories with inotify (netns files appearing in /run/netns, say).
public final class DirectoryWatcher {
    let fd: Int32

    /// Watches `create` (created when missing) and `existing` (watched only if present) for entries
    /// created, deleted or moved in.
    public init(create: [String], existing: [String] = []) throws {
        fd = try sys("inotify_init1") { inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK)) }
        for p in create { try? NetClsHierarchy.makeDirectories(p) }
        for p in Set(create + existing) where Files.isDirectory(p) {
            _ = inotify_add_watch(fd, p, UInt32(IN_CREATE | IN_DELETE | IN_MOVED_TO))
        }
    }

    deinit { close(fd) }

    /// True when something changed within `timeoutMilliseconds`.
    public func wait(timeoutMilliseconds: Int32) -> Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, timeoutMilliseconds) > 0 else { return false }
        var buf = [UInt8](repeating: 0, count: 4096)
        while buf.withUnsafeMutableBytes({ read(fd, $0.baseAddress, $0.count) }) > 0 {}
        return true
    }
}

/// sd_notify(3): tells systemd about readiness, reloads and shutdown through $NOTIFY_SOCKET.
public enum SystemdNotify {
    /// Sends `state` (e.g. "READY=1"); a no-op when not started by systemd with Type=notify.
    @discardableResult
    public static func send(_ state: String) -> Bool {
        guard let socket = getenv("NOTIFY_SOCKET") else { return false }
        return netshape_sd_notify(socket, state) == 0
    }

    /// `WATCHDOG_USEC` from the environment, when systemd's watchdog is on.
    public static var watchdogMicroseconds: UInt64? {
        getenv("WATCHDOG_USEC").flatMap { UInt64(String(cString: $0)) }
    }
}
