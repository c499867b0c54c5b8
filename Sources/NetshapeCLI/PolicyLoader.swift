import Glibc
import NetshapeCore
import NetshapePolicy

/// A failure the CLI reports with its own exit status.
public struct CLIError: Error, CustomStringConvertible {
    public var message: String
    public var exitCode: Int32
    public init(_ message: String, exitCode: Int32 = 1) {
        self.message = message
        self.exitCode = exitCode
    }
    public var description: String { message }
}

/// Reads policy files: as text for `check`, and with the checks a root tool owes its config files
/// (the way sshd and sudo treat theirs) for the commands that change the machine.
enum PolicyLoader {
    /// Reads and validates `path`. With `trusted`, first refuses a file (or its directory) that a
    /// non-root user could have written.
    static func load(_ path: String, trusted: Bool) throws -> (Policy, String) {
        let absolute = absolutePath(path)
        if trusted { try checkOwnership(absolute) }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw CLIError("cannot read policy \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw CLIError("cannot read policy \(path): \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            bytes += buf[0..<n]
            if bytes.count > 64 << 20 { throw CLIError("policy \(path) is larger than 64 MiB") }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw CLIError("\(path):1:1: error: the policy is not valid UTF-8", exitCode: 65)
        }
        return (try PolicyParser.parse(text, file: path), absolute)
    }

    /// Refuses a policy that is group- or world-writable or owned by someone other than the
    /// invoking user (root), and likewise for its directory unless that is sticky (like /tmp).
    static func checkOwnership(_ path: String) throws {
        let me = geteuid()
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw CLIError("cannot read policy \(path): \(String(cString: strerror(errno)))")
        }
        if st.st_uid != me {
            throw CLIError(
                "refusing policy \(path): it is owned by uid \(st.st_uid), not by uid \(me) who runs netshape; another user could rewrite what root applies (chown it)"
            )
        }
        if st.st_mode & (S_IWGRP | S_IWOTH) != 0 {
            throw CLIError(
                "refusing policy \(path): it is writable by group or others (mode \(String(st.st_mode & 0o777, radix: 8))); chmod go-w it"
            )
        }
        let slash = path.lastIndex(of: "/") ?? path.startIndex
        let dir = slash == path.startIndex ? "/" : String(path[..<slash])
        var dst = stat()
        if stat(dir, &dst) == 0 {
            let sticky = dst.st_mode & S_ISVTX != 0
            let foreignOwner = dst.st_uid != me && dst.st_uid != 0
            let openWrite = dst.st_mode & (S_IWGRP | S_IWOTH) != 0
            if !sticky && (foreignOwner || openWrite) {
                throw CLIError(
                    "refusing policy \(path): its directory \(dir) can be written by other users, who could swap the file"
                )
            }
        }
    }

    static func absolutePath(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX))
        guard getcwd(&buf, buf.count) != nil else { return path }
        let cwd = String(cString: buf)
        return (cwd == "/" ? "" : cwd) + "/" + path
    }
}
