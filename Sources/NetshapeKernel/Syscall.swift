import Glibc

/// The one place NetshapeKernel's descriptor loops live: every read-to-end, write-all, directory
/// listing, sleep and exec goes through here, so errno is read right after the call that set it,
/// EINTR is retried in `sysResult()` alone (which `sys()`, `BPF.call` and this file's sleep use),
/// and a short write is continued instead of silently dropped. The deliberate exceptions are the
/// poll waits (`Poller.wait`, `Terminal.next`): there a signal ends the wait as a timeout, because retrying with the same timeout
/// would stretch the caller's deadline. Callers above NetshapeKernel use the public entry points
/// and never see Glibc.
public enum Syscall {
    /// Reads `fd` until end of file. Throws on a read error (naming `what`) and, past `limit`
    /// bytes, `tooLarge` when given, else stops at `limit` (a /proc file larger than any netshape
    /// reads whole is cut, as before).
    static func readToEnd(
        _ fd: Int32, what: @autoclosure () -> String, limit: Int = 1 << 20, chunk: Int = 65536,
        tooLarge: (() -> any Error)? = nil
    ) throws -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: chunk)
        while out.count <= limit {
            let n = try readSome(fd, into: &buf, what: what())
            if n == 0 { return out }
            out += buf[0..<n]
        }
        if let tooLarge { throw tooLarge() }
        return Array(out.prefix(limit))
    }

    /// write(2)'s shape.
    typealias WriteCall = (Int32, UnsafeRawPointer?, Int) -> Int

    /// One read(2) into `buf`: how many bytes arrived (0 at end of file).
    static func readSome(_ fd: Int32, into buf: inout [UInt8], what: @autoclosure () -> String) throws -> Int {
        try buf.withUnsafeMutableBytes { raw in
            try sys("read(\(what()))") { read(fd, raw.baseAddress, raw.count) }
        }
    }

    /// Writes all of `bytes`, continuing after a short write (pipes, sockets, terminals).
    /// `write` is write(2) but for tests, which make it short.
    static func writeAll(
        _ fd: Int32, _ bytes: [UInt8], what: @autoclosure () -> String, write: WriteCall = Glibc.write
    ) throws {
        var off = 0
        while off < bytes.count {
            let n = try bytes.withUnsafeBytes { raw in
                try sys("write(\(what()))") { write(fd, raw.baseAddress! + off, raw.count - off) }
            }
            off += n
        }
    }

    /// Writes `bytes` with exactly one write(2): cgroupfs and /proc control files act on each
    /// write, so a continued write would be a second command. A short write is an error.
    static func writeOnce(
        _ fd: Int32, _ bytes: [UInt8], what: @autoclosure () -> String, write: WriteCall = Glibc.write
    ) throws {
        let n = try bytes.withUnsafeBytes { raw in
            try sys("write(\(what()))") { write(fd, raw.baseAddress, raw.count) }
        }
        if n != bytes.count { throw KernelError.syscall("write(\(what())): short write (\(n) of \(bytes.count))", EIO) }
    }

    /// The entries of the directory open as `dir` (the descriptor stays the caller's), without
    /// `.` and `..`; `directoriesOnly` keeps the entries whose d_type says directory. Empty when
    /// it cannot be listed.
    static func entries(of dir: Int32, directoriesOnly: Bool = false) -> [String] {
        let copy = dup(dir)
        guard copy >= 0 else { return [] }
        guard let d = fdopendir(copy) else {
            close(copy)
            return []
        }
        defer { closedir(d) }
        // The copy shares the caller's offset: start from the top, also on a second listing.
        rewinddir(d)
        var names: [String] = []
        while let e = readdir(d) {
            if directoriesOnly && e.pointee.d_type != UInt8(DT_DIR) { continue }
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// The entries of the directory at `path` (see `entries(of:)`).
    static func entries(at path: String, directoriesOnly: Bool = false) -> [String] {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        return entries(of: fd, directoriesOnly: directoriesOnly)
    }

    /// Sleeps the calling thread for `seconds`, resuming after a signal until the time is up
    /// (never on a concurrency pool thread: a blocking reader's retry pause, the CLI's waits).
    public static func sleep(seconds: Double) {
        guard seconds > 0 else { return }
        var ts = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - Double(Int(seconds))) * 1e9))
        var rest = timespec()
        // sysResult's retry resumes with what the interrupted call left.
        _ = sysResult {
            let r = nanosleep(&ts, &rest)
            if r != 0 { ts = rest }
            return r
        }
    }

    /// `sleep(seconds:)` in milliseconds.
    public static func sleep(milliseconds: Int) { sleep(seconds: Double(milliseconds) / 1000) }

    /// Standard input to its end (a CNI plugin's network config).
    public static func readStandardInput() throws -> [UInt8] {
        try readToEnd(0, what: "stdin", limit: Int.max)
    }

    /// Writes all of `text` to standard output (1) or standard error (2); a closed stream is
    /// ignored (nothing is left to tell).
    public static func write(_ text: String, to fd: Int32) {
        try? writeAll(fd, Array(text.utf8), what: "fd \(fd)")
    }

    /// Replaces the process with `argv` (searched in PATH); returns only on failure, with errno.
    public static func exec(_ argv: [String]) -> KernelError {
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
        cArgs.append(nil)
        execvp(argv[0], &cArgs)
        let e = errno
        for p in cArgs { free(p) }
        return KernelError.syscall("execvp(\(argv[0]))", e)
    }

    /// The C library's text for `errno`.
    public static func describe(errno e: Int32) -> String { String(cString: strerror(e)) }

    /// Ends the process with `status`.
    public static func exit(_ status: Int32) -> Never { Glibc.exit(status) }

    /// This process's id.
    public static var processID: Int32 { getpid() }

    /// This process's real uid and gid: what the socket-creation program reads
    /// (`bpf_get_current_uid_gid`), so what a `user`/`group` rule matches.
    public static var realIDs: (uid: UInt32, gid: UInt32) { (getuid(), getgid()) }

    /// True when the process runs as root (effective uid 0).
    public static var isRoot: Bool { geteuid() == 0 }

    /// The environment variable `name`, if set.
    public static func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

    /// Every environment variable, read once.
    public static func environment() -> [String: String] {
        var v: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") { v[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            p += 1
        }
        return v
    }
}
