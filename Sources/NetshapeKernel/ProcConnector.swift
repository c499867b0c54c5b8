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
    let transport: any NetlinkTransport

    /// `what` values of `struct proc_event` (linux/cn_proc.h).
    static let execEvent: UInt32 = 0x0000_0002
    static let uidEvent: UInt32 = 0x0000_0004
    static let gidEvent: UInt32 = 0x0000_0040
    static let commEvent: UInt32 = 0x0000_0200

    /// Opens the connector and subscribes (`PROC_CN_MCAST_LISTEN`).
    public convenience init() throws {
        // Bound to the CN_IDX_PROC group with our pid as the port id, as the kernel's
        // samples/connector/ucon.c and cgrulesengd do.
        let socket = try NetlinkSocket(
            protocol: Int32(NETLINK_CONNECTOR), groups: UInt32(CN_IDX_PROC), pid: UInt32(getpid()),
            label: "NETLINK_CONNECTOR (proc connector)", extendedAck: false)
        // A large receive buffer absorbs fork/exec storms; SO_RCVBUFFORCE passes the sysctl limit
        // (CAP_NET_ADMIN), plain SO_RCVBUF is the fallback.
        let size: Int32 = 8 << 20
        if (try? socket.setOption(SOL_SOCKET, 33 /* SO_RCVBUFFORCE */, size, "SO_RCVBUFFORCE")) == nil {
            _ = try? socket.setOption(SOL_SOCKET, SO_RCVBUF, size, "SO_RCVBUF")
        }
        try self.init(transport: socket)
    }

    /// Subscribes over `transport` (tests replay captured events).
    init(transport: any NetlinkTransport) throws {
        self.transport = transport
        do {
            try transport.send(Self.subscribeMessage(listen: true, portid: transport.portID))
        } catch let e as KernelError {
            throw KernelError(
                e.code, "proc connector subscribe (PROC_CN_MCAST_LISTEN)", errno: e.errno, reason: e.reason)
        }
    }

    deinit {
        try? transport.send(Self.subscribeMessage(listen: false, portid: transport.portID))
    }

    /// nlmsghdr + cn_msg {idx CN_IDX_PROC, val CN_VAL_PROC, len 4} + enum proc_cn_mcast_op.
    static func subscribeMessage(listen: Bool, portid: UInt32) -> [UInt8] {
        var w = NetlinkWriter()
        w.u32(UInt32(CN_IDX_PROC))  // cn_msg.id.idx
        w.u32(UInt32(CN_VAL_PROC))  // cn_msg.id.val
        w.u32(0)  // seq
        w.u32(0)  // ack
        w.u16(4)  // len
        w.u16(0)  // flags
        w.u32(listen ? 1 : 2)  // PROC_CN_MCAST_LISTEN / PROC_CN_MCAST_IGNORE
        // nlmsg_type: the connector takes a single "done" message; no flags, seq 0.
        return NetlinkMessage(type: Netlink.done, flags: [], pid: portid, payload: w.bytes).bytes
    }

    /// Waits up to `timeoutMilliseconds` for events.
    public func next(timeoutMilliseconds: Int32) throws -> ProcConnectorRead {
        do {
            guard let messages = try transport.receive(timeoutMilliseconds: timeoutMilliseconds) else {
                return .timeout
            }
            return .events(Self.parse(messages))
        } catch let e as KernelError where e.errno == ENOBUFS {
            return .overflow
        } catch let e as KernelError where e.errno == EAGAIN {
            return .timeout
        }
    }

    /// Events in one datagram: nlmsghdr, cn_msg, then struct proc_event
    /// { u32 what; u32 cpu; u64 timestamp_ns; union { … { pid, tgid } … } }. A datagram that does
    /// not decode gives no events (the periodic /proc rescan still catches its processes).
    public static func parse(_ bytes: [UInt8]) -> [ProcEvent] {
        parse((try? NetlinkMessage.parse(bytes)) ?? [])
    }

    static func parse(_ messages: [NetlinkMessage]) -> [ProcEvent] {
        messages.compactMap { m in
            // cn_msg is 20 bytes; the event header up to the tgid another 24.
            guard m.payload.count >= 20 + 24 else { return nil }
            let r = NetlinkReader(m.payload, at: 20)
            let ts = r.u64(8)
            let tgid = Int32(bitPattern: r.u32(20))
            switch r.u32(0) {
            case execEvent: return .exec(tgid: tgid, timestampNS: ts)
            case uidEvent, gidEvent: return .identity(tgid: tgid, timestampNS: ts)
            case commEvent: return .comm(tgid: tgid, timestampNS: ts)
            default: return nil
            }
        }
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
        // Drained to EAGAIN (the descriptor is non-blocking; any error ends the drain): what changed is
        // not needed, only that it did.
        while sysResult({ buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } }).value > 0 {}
        return true
    }
}

/// sd_notify(3): tells systemd about readiness, reloads and shutdown through $NOTIFY_SOCKET.
public enum SystemdNotify {
    /// Sends `state` (e.g. "READY=1"); a no-op when not started by systemd with Type=notify.
    @discardableResult
    public static func send(_ state: String) -> Bool {
        guard let socket = Syscall.environment("NOTIFY_SOCKET") else { return false }
        return netshape_sd_notify(socket, state) == 0
    }

    /// `WATCHDOG_USEC` from the environment, when systemd's watchdog is on.
    public static var watchdogMicroseconds: UInt64? {
        Syscall.environment("WATCHDOG_USEC").flatMap { UInt64($0) }
    }
}
