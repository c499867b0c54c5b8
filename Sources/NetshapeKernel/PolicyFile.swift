import Glibc

/// A policy file that cannot be used, with the one message every entry point prints (CLI, daemon
/// start, SIGHUP reload, CNI).
public struct PolicyFileError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    /// Set when the refusal is about who may write the file, not about reading it.
    public var unsafe: Bool
    public init(_ message: String, unsafe: Bool = false) {
        self.message = message
        self.unsafe = unsafe
    }
    public var description: String { message }
}

/// Reads policy files the way sshd and sudo read their configuration: for a root tool a file that
/// another user could rewrite is as good as a command that user runs as root.
///
/// The rule (docs/policy.md, "File safety, limits and namespace targets"): netshape walks the path
/// one component at a time from `/`, through a directory descriptor, so that what it checks is what
/// it reads. Every directory it passes through (including the directories of symlinks it follows,
/// and the directories their targets lead to) must be owned by root or the invoking user and not
/// writable by group or others, unless it is sticky (like /tmp) or on a read-only mount. A symlink
/// that is followed must be owned by root or the invoking user. The file itself must be a regular
/// file owned by the invoking user and not writable by group or others, unless it is on a read-only
/// mount (statvfs `ST_RDONLY`, as a kubelet configMap is: nobody can rewrite it through that mount).
/// The contents are read from the descriptor that was checked.
public enum PolicyFile {
    /// The largest policy netshape reads: far above any real policy, far below memory trouble.
    public static let maxBytes = 16 << 20
    /// Symlinks followed before giving up (the kernel's own limit).
    static let maxLinks = 40

    /// Reads `path`. With `trusted`, first refuses a file that a non-root user could have written
    /// (see the type's rule). Returns the text and the absolute path (symlinks not resolved, so that
    /// a reload follows a configMap's `..data` swap).
    public static func read(_ path: String, trusted: Bool) throws(PolicyFileError) -> (text: [UInt8], absolute: String)
    {
        let absolute = absolutePath(path)
        guard !path.utf8.contains(0) else {
            throw PolicyFileError("cannot read policy \(path): the path contains a NUL byte")
        }
        let fd: Int32
        if trusted {
            fd = try openChecked(absolute, shown: path)
        } else {
            fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
            guard fd >= 0 else {
                throw PolicyFileError("cannot read policy \(path): \(String(cString: strerror(errno)))")
            }
            var st = stat()
            if fstat(fd, &st) == 0 && st.st_mode & S_IFMT != S_IFREG {
                close(fd)
                throw PolicyFileError("cannot read policy \(path): it is not a regular file")
            }
        }
        defer { close(fd) }
        do {
            let bytes = try Syscall.readToEnd(fd, what: path, limit: maxBytes) {
                PolicyFileError("policy \(path) is larger than \(maxBytes >> 20) MiB")
            }
            return (bytes, absolute)
        } catch let e as PolicyFileError {
            throw e
        } catch {
            throw PolicyFileError("cannot read policy \(path): \((error as? KernelError)?.reason ?? "\(error)")")
        }
    }

    /// Walks `absolute` from `/` and returns a read descriptor of the checked file.
    static func openChecked(_ absolute: String, shown: String) throws(PolicyFileError) -> Int32 {
        let me = geteuid()
        var pending = absolute.split(separator: "/").map(String.init)
        var walked: [String] = []
        var links = 0
        var dir = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dir >= 0 else {
            throw PolicyFileError("cannot read policy \(shown): open(/): \(String(cString: strerror(errno)))")
        }
        defer { close(dir) }
        try checkDirectory(dir, "/", shown: shown, me: me)
        func here() -> String { "/" + walked.joined(separator: "/") }
        func fail(_ what: String) -> PolicyFileError {
            PolicyFileError("cannot read policy \(shown): \(what): \(String(cString: strerror(errno)))")
        }
        while !pending.isEmpty {
            let name = pending.removeFirst()
            if name == "." || name.isEmpty { continue }
            if name == ".." {
                // The parent of a checked directory was checked on the way down (or is an ancestor of /).
                if !walked.isEmpty { walked.removeLast() }
                let parent = open(here(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                guard parent >= 0 else { throw fail("open(\(here()))") }
                close(dir)
                dir = parent
                try checkDirectory(dir, here(), shown: shown, me: me)
                continue
            }
            let full = (walked.isEmpty ? "" : here()) + "/" + name
            var st = stat()
            guard fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { throw fail("stat(\(full))") }
            switch st.st_mode & S_IFMT {
            case S_IFLNK:
                links += 1
                if links > maxLinks {
                    throw PolicyFileError("cannot read policy \(shown): more than \(maxLinks) symlinks")
                }
                if st.st_uid != 0 && st.st_uid != me && !readOnly(dir) {
                    throw PolicyFileError(
                        "refusing policy \(shown): the symlink \(full) is owned by uid \(st.st_uid), who could point it elsewhere",
                        unsafe: true)
                }
                var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
                let n = readlinkat(dir, name, &buf, buf.count - 1)
                guard n > 0 else { throw fail("readlink(\(full))") }
                let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                pending = target.split(separator: "/").map(String.init) + pending
                if target.hasPrefix("/") {
                    walked = []
                    let root = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                    guard root >= 0 else { throw fail("open(/)") }
                    close(dir)
                    dir = root
                }
            case S_IFDIR where !pending.isEmpty:
                let next = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                guard next >= 0 else { throw fail("open(\(full))") }
                close(dir)
                dir = next
                walked.append(name)
                try checkDirectory(dir, full, shown: shown, me: me)
            case S_IFREG where pending.isEmpty:
                let fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
                guard fd >= 0 else { throw fail("open(\(full))") }
                var fst = stat()
                guard fstat(fd, &fst) == 0, fst.st_dev == st.st_dev, fst.st_ino == st.st_ino else {
                    close(fd)
                    throw PolicyFileError(
                        "refusing policy \(shown): \(full) changed while it was being opened", unsafe: true)
                }
                do throws(PolicyFileError) {
                    try checkFile(fd, fst, full, shown: shown, me: me)
                } catch {
                    close(fd)
                    throw error
                }
                return fd
            default:
                if pending.isEmpty {
                    throw PolicyFileError("cannot read policy \(shown): \(full) is not a regular file")
                }
                errno = ENOTDIR
                throw fail("open(\(full))")
            }
        }
        throw PolicyFileError("cannot read policy \(shown): it names a directory")
    }

    /// The invoking user's file, writable by nobody else (or on a read-only mount).
    static func checkFile(_ fd: Int32, _ st: stat, _ path: String, shown: String, me: uid_t) throws(PolicyFileError) {
        if readOnly(fd) { return }
        if st.st_uid != me {
            if st.st_uid == 0 && me != 0 {
                throw PolicyFileError(
                    "refusing policy \(shown): it is owned by root and netshape runs as uid \(me); run netshape as root (it changes the kernel's traffic control), or chown the file to uid \(me) for a private test",
                    unsafe: true)
            }
            throw PolicyFileError(
                "refusing policy \(shown): \(path) is owned by uid \(st.st_uid), not by uid \(me) who runs netshape; another user could rewrite what netshape applies (chown \(me) it)",
                unsafe: true)
        }
        if st.st_mode & (S_IWGRP | S_IWOTH) != 0 {
            throw PolicyFileError(
                "refusing policy \(shown): \(path) is writable by group or others (mode \(String(st.st_mode & 0o777, radix: 8))); chmod go-w it",
                unsafe: true)
        }
    }

    /// A directory only root or the invoking user can change entries of (sticky and read-only pass).
    static func checkDirectory(_ fd: Int32, _ path: String, shown: String, me: uid_t) throws(PolicyFileError) {
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw PolicyFileError("cannot read policy \(shown): stat(\(path)): \(String(cString: strerror(errno)))")
        }
        let sticky = st.st_mode & S_ISVTX != 0
        let foreignOwner = st.st_uid != me && st.st_uid != 0
        let openWrite = st.st_mode & (S_IWGRP | S_IWOTH) != 0
        if sticky || !(foreignOwner || openWrite) || readOnly(fd) { return }
        let why =
            foreignOwner
            ? "is owned by uid \(st.st_uid)"
            : "is writable by group or others (mode \(String(st.st_mode & 0o777, radix: 8)))"
        throw PolicyFileError(
            "refusing policy \(shown): its directory \(path) \(why), so another user could swap the file", unsafe: true)
    }

    /// True when `fd` is on a read-only mount.
    static func readOnly(_ fd: Int32) -> Bool {
        var sv = statvfs()
        return fstatvfs(fd, &sv) == 0 && sv.f_flag & UInt(ST_RDONLY) != 0
    }

    public static func absolutePath(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX))
        guard getcwd(&buf, buf.count) != nil else { return path }
        let cwd = String(cString: buf)
        return (cwd == "/" ? "" : cwd) + "/" + path
    }
}
