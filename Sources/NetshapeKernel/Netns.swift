internal import CNetshapeShim
import Glibc
import NetshapeCore

/// Runs `body` on a new OS thread and waits for it.
///
/// `setns(CLONE_NEWNET)` changes only the calling thread's namespace. Doing it on a thread that
/// exits right after means no other code (Swift's runtime, a logger, a concurrency pool) can ever
/// run in the wrong namespace, and nothing has to be switched back. Sockets opened there stay bound
/// to that namespace for their whole life.
func onDedicatedThread<T>(_ body: @escaping () throws -> T) throws -> T {
    var result: Result<T, any Error>?
    let thread = try spawn(name: "netshape-netns") { result = Result { try body() } }
    pthread_join(thread, nil)
    guard let result else { throw KernelError(.state, "dedicated thread", reason: "produced no result") }
    return try result.get()
}

/// Starts `body` on a new OS thread (the one place netshape calls pthread_create).
func spawn(name: String, _ body: @escaping () -> Void) throws -> pthread_t {
    var thread = pthread_t()
    let ctx = Unmanaged.passRetained(ThreadBox(body)).toOpaque()
    let rc = pthread_create(
        &thread, nil,
        { raw in
            Unmanaged<ThreadBox>.fromOpaque(raw!).takeRetainedValue().run()
            return nil
        }, ctx)
    guard rc == 0 else {
        Unmanaged<ThreadBox>.fromOpaque(ctx).release()
        throw KernelError.syscall("pthread_create(\(name))", rc)
    }
    _ = netshape_set_thread_name(thread, String(name.prefix(15)))
    return thread
}

/// The work handed to a dedicated thread (type-erased: a C thread entry cannot be generic).
final class ThreadBox: @unchecked Sendable {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

/// An open network namespace: the file that names it, held open so the namespace cannot vanish
/// under netshape while it works, and its identity (`st_dev:st_ino`).
///
/// Equivalent to what `ip netns exec NAME` enters, without the mount namespace and fresh /sys it
/// adds (those would hide /sys/fs/cgroup).
public final class NetworkNamespace {
    public let target: NetnsTarget
    /// `st_dev:st_ino` of the namespace, comparable with /proc/PID/ns/net of processes.
    public let id: String
    public let inode: UInt64
    let fd: Int32

    /// Opens `target`. Throws `.notFound` naming the file when it does not exist.
    public init(_ target: NetnsTarget) throws {
        self.target = target
        // The host is the namespace netshape was started in: the main thread's, which is only
        // ever changed by `netshape run` right before exec.
        // A container target must be resolved to its namespace file first (LinuxKernel.sockets).
        guard target == .host || target.path != nil else {
            throw KernelError(.state, "open(\(target))", reason: "container target \(target) was not resolved")
        }
        let path = target.path ?? "/proc/self/ns/net"
        let fd = try Self.openBounded(path, target: target)
        var st = stat()
        let fsType = netshape_fstatfs_type(fd)
        guard fsType >= 0, fstat(fd, &st) == 0 else {
            let e = errno
            close(fd)
            throw KernelError.syscall("fstat(\(path))", e)
        }
        // Refuse a path that is not a network namespace file (a regular file, a FIFO, or another
        // kind of namespace such as /proc/self/ns/mnt) before anything can block or reach setns.
        guard fsType == 0x6E73_6673 /* NSFS_MAGIC */ else {
            close(fd)
            throw KernelError(
                .notFound, "open(\(path))", errno: EINVAL,
                reason: "\(path) is not a network namespace file (not on nsfs)")
        }
        let type = netshape_ns_get_nstype(fd)
        guard type == netshape_clone_newnet() else {
            let e = errno
            close(fd)
            throw KernelError(
                .notFound, "ioctl(\(path), NS_GET_NSTYPE)", errno: type < 0 ? e : EINVAL,
                reason: type < 0
                    ? String(cString: strerror(e)) : "\(path) is a namespace, but not a network namespace")
        }
        self.fd = fd
        self.id = "\(st.st_dev):\(st.st_ino)"
        self.inode = UInt64(st.st_ino)
    }

    deinit { close(fd) }

    /// How long opening a namespace file may take. O_NONBLOCK keeps a FIFO from blocking; the
    /// bound covers what it cannot (a hung FUSE or network filesystem under a path target).
    public static let openTimeoutMilliseconds: Int32 = 2000

    /// Opens `path` read-only and non-blocking on a helper thread, giving up after the bound. A
    /// thread stuck in open(2) is left behind (it closes what it opens, late).
    static func openBounded(_ path: String, target: NetnsTarget) throws -> Int32 {
        var fds: [Int32] = [0, 0]
        try sys("pipe(open \(path))") { pipe(&fds) }
        let readEnd = fds[0]
        let writeEnd = fds[1]
        // The helper writes the fd (or -errno) into the pipe. After a timeout the read end is left
        // open on purpose: the late write then succeeds instead of raising SIGPIPE, and the pipe
        // and the late fd are the whole cost of a hung filesystem.
        let thread = try spawn(name: "netshape-open") {
            let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
            var value: Int32 = fd >= 0 ? fd : -errno
            // A pipe write of 4 bytes is atomic: it is all there or the pipe is gone.
            _ = try? sys("write(open \(path) result)") {
                withUnsafeBytes(of: &value) { write(writeEnd, $0.baseAddress, 4) }
            }
            close(writeEnd)
        }
        pthread_detach(thread)
        var pfd = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
        let ready = try sys("poll(open \(path))") { poll(&pfd, 1, openTimeoutMilliseconds) }
        guard ready > 0 else {
            throw KernelError(
                .notFound, "open(\(path))", errno: ETIMEDOUT,
                reason:
                    "network namespace \(target): opening \(path) did not finish within \(openTimeoutMilliseconds) ms")
        }
        defer { close(readEnd) }
        var value: Int32 = 0
        let n = try sys("read(open \(path) result)") {
            withUnsafeMutableBytes(of: &value) { read(readEnd, $0.baseAddress, 4) }
        }
        guard n == 4 else { throw KernelError.syscall("open(\(path))", EIO) }
        if value >= 0 { return value }
        let e = -value
        if e == ENOENT {
            // Said where the user is most likely to meet it: a plan or apply before the namespace was made.
            let hint =
                if case .named(let name) = target {
                    " (create it with `ip netns add \(name)`, or give the namespace a `provision` block and netshape creates it)"
                } else { "" }
            throw KernelError(
                .notFound, "open(\(path))", errno: e, reason: "network namespace \(target) does not exist\(hint)")
        }
        if e == ESRCH, case .pid(let p) = target {
            throw KernelError(.notFound, "open(\(path))", errno: e, reason: "no such process \(p)")
        }
        throw KernelError.syscall("open(\(path))", e)
    }

    /// Why `pid`'s /proc entry cannot be read: ENOENT or ESRCH when there is no such process,
    /// EACCES when it exists but is not readable; 0 when it is readable.
    public static func procAccessErrno(_ pid: Int32) -> Int32 {
        let fd = open("/proc/\(pid)/ns/net", O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        if fd >= 0 {
            close(fd)
            return 0
        }
        return errno
    }

    /// Runs `body` on a dedicated thread inside this namespace. Keep `body` synchronous: no
    /// `await`, so it cannot hop to a thread in another namespace.
    public func run<T>(_ body: @escaping () throws -> T) throws -> T {
        let fd = self.fd
        let target = self.target
        return try onDedicatedThread {
            try sys("setns(\(target), CLONE_NEWNET)") { netshape_setns_net(fd) }
            return try body()
        }
    }

    /// Moves the calling thread into this namespace for good (`netshape run`, right before exec).
    public func enterForExec() throws {
        try sys("setns(\(target), CLONE_NEWNET)") { netshape_setns_net(fd) }
    }
}

/// Starts `body` on a new detached OS thread named `name` (for the daemon's blocking readers).
public func startThread(name: String, _ body: @escaping @Sendable () -> Void) throws {
    pthread_detach(try spawn(name: name, body))
}
