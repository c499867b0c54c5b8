import Glibc

/// Small, exact file helpers for /proc, /sys and netshape's state files: whole-file reads with one
/// fd, writes that report the kernel's errno (the loops themselves are `Syscall`'s).
enum Files {
    /// Reads a whole file; nil when it cannot be opened or read (the process exited, the file is gone).
    static func read(_ path: String, limit: Int = 1 << 20) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return try? Syscall.readToEnd(fd, what: path, limit: limit, chunk: 4096)
    }

    /// Reads `name` in the directory open as `dir`, without following a symlink (cgroupfs walks).
    static func read(at dir: Int32, _ name: String) -> String? {
        let fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return (try? Syscall.readToEnd(fd, what: name, chunk: 4096)).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Reads a text file; nil when it cannot be opened.
    static func readString(_ path: String) -> String? {
        read(path).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Writes all of `text` to the regular file `path` (netshape's state files), throwing the
    /// kernel's errno. cgroupfs files go through `NetClsHierarchy`, which writes once.
    static func write(_ path: String, _ text: String, flags: Int32 = O_WRONLY) throws {
        let fd = try sys("open(\(path))") { open(path, flags | O_CLOEXEC | O_NOFOLLOW, 0o644) }
        defer { close(fd) }
        try Syscall.writeAll(fd, Array(text.utf8), what: path)
    }

    /// Replaces `path` with `text` atomically: a temporary file of this process's own beside it,
    /// then rename, so a crash never leaves half a file and two writers never share one temporary
    /// (CNI invocations and `check`'s capability cache run beside each other without the state lock).
    static func replace(_ path: String, with text: String) throws {
        let tmp = "\(path).\(Syscall.processID).tmp"
        try write(tmp, text, flags: O_WRONLY | O_CREAT | O_TRUNC)
        do {
            try sys("rename(\(tmp), \(path))") { rename(tmp, path) }
        } catch {
            _ = sysResult { unlink(tmp) }
            throw error
        }
    }

    /// The target of a symlink (e.g. /proc/PID/exe); nil when unreadable.
    static func readLink(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink(path, &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// `st_dev:st_ino` of a file, following symlinks (namespace files are magic links).
    static func identity(_ path: String) -> String? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return "\(st.st_dev):\(st.st_ino)"
    }

    /// Names in a directory (without . and ..); empty when unreadable.
    static func list(_ path: String) -> [String] { Syscall.entries(at: path) }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }
}

extension String {
    /// Without leading and trailing blanks and newlines (Foundation-free).
    func trimmingBlanksAndNewlines() -> String {
        let isBlank: (Character) -> Bool = { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }
        return String(self.drop(while: isBlank).reversed().drop(while: isBlank).reversed())
    }
}
