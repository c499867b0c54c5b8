import Glibc
import NetshapeCore

/// The cgroup v2 (unified) hierarchy, read only: netshape never creates, moves or writes anything
/// in it. It is where a cgroup-path class's directories are found and named by id.
public enum Cgroup2Mount {
    /// The mount point of the cgroup2 root: `/sys/fs/cgroup` on a unified host,
    /// `/sys/fs/cgroup/unified` on a hybrid one. nil when cgroup2 is not mounted.
    public static func find(mountinfo: String? = nil) -> String? {
        guard let text = mountinfo ?? Files.readString("/proc/self/mountinfo") else { return nil }
        return MountInfoEntry.parse(text).first { $0.fsType == "cgroup2" && $0.root == "/" }?.mountPoint
    }

    /// The id the kernel gives the cgroup at `path` (relative to the mount, `a/b`): the directory's
    /// inode number, which is what `bpf_skb_ancestor_cgroup_id` returns. Symlinks are not followed
    /// (cgroupfs has none; one would point outside). nil when it is not a directory there.
    public static func id(mount: String, path: String) -> Cgroup2ID? {
        let components = path.split(separator: "/")
        var st = stat()
        let full = mount + (components.isEmpty ? "" : "/" + components.joined(separator: "/"))
        guard lstat(full, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else { return nil }
        return Cgroup2ID(id: UInt64(st.st_ino), level: components.count)
    }
}

/// Watches the cgroup v2 tree for the directories a policy's path rules name: inotify on the
/// deepest existing ancestor of each (a rule's parent once it exists), so a unit or container
/// started later, a directory removed, renamed or re-created, is seen at once. Read only.
public final class Cgroup2Watcher {
    let fd: Int32
    let mount: String
    public let paths: [String]
    /// Watch descriptor → the directory (relative to the mount) it watches.
    var watched: [Int32: String] = [:]

    /// `paths` are normalised rule paths relative to `mount`.
    public init(mount: String, paths: [String]) throws {
        self.mount = mount
        self.paths = paths
        fd = try sys("inotify_init1 for the cgroup2 tree") { inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK)) }
        arm()
    }

    deinit { close(fd) }

    /// The directory to watch for `path`: its parent, or the deepest ancestor that exists.
    static func anchor(for path: String, exists: (String) -> Bool) -> String {
        var parts = path.split(separator: "/").map(String.init)
        guard !parts.isEmpty else { return "" }
        parts.removeLast()
        while !parts.isEmpty && !exists(parts.joined(separator: "/")) { parts.removeLast() }
        return parts.joined(separator: "/")
    }

    /// True when an entry `name` appearing or going in directory `dir` can change what a rule
    /// path resolves to.
    static func relevant(dir: String, name: String, paths: [String]) -> Bool {
        let child = dir.isEmpty ? name : dir + "/" + name
        return paths.contains { $0 == child || $0.hasPrefix(child + "/") }
    }

    /// (Re)places the watches: after a directory on the way to a rule appeared, its child is next.
    func arm() {
        for wd in watched.keys { inotify_rm_watch(fd, wd) }
        watched = [:]
        let anchors = Set(paths.map { Self.anchor(for: $0) { Files.isDirectory(mount + "/" + $0) } })
        for a in anchors {
            let full = a.isEmpty ? mount : mount + "/" + a
            let wd = inotify_add_watch(
                fd, full, UInt32(IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM | IN_ONLYDIR | IN_DELETE_SELF))
            if wd >= 0 { watched[wd] = a }
        }
    }

    /// The rule-relevant changes (`dir/name`) within `timeoutMilliseconds`; empty when none.
    public func wait(timeoutMilliseconds: Int32) -> [String] {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, timeoutMilliseconds) > 0 else { return [] }
        var changes: [String] = []
        var buf = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            var off = 0
            // struct inotify_event: wd, mask, cookie, len, then len bytes of NUL-padded name.
            while off + 16 <= n {
                let wd: Int32 = integer(from: Array(buf[off..<(off + 4)]))
                let len = Int(integer(from: Array(buf[(off + 12)..<(off + 16)])) as UInt32)
                let nameBytes = buf[(off + 16)..<min(off + 16 + len, n)].prefix { $0 != 0 }
                let name = String(decoding: nameBytes, as: UTF8.self)
                if let dir = watched[wd] {
                    if name.isEmpty || Self.relevant(dir: dir, name: name, paths: paths) {
                        changes.append(name.isEmpty ? "/" + dir : "/" + (dir.isEmpty ? name : dir + "/" + name))
                    }
                }
                off += 16 + len
            }
        }
        if !changes.isEmpty { arm() }
        return changes
    }
}
