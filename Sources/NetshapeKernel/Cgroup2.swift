import Glibc
import NetshapeCore

/// The cgroup v2 (unified) hierarchy, read only but for `enter`: netshape never creates, removes
/// or moves anything else in it (the directories are systemd's, a runtime's, the operator's). It is
/// where a cgroup-path class's directories are found and named by id.
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

extension Cgroup2Mount {
    /// Every directory at and below each of `roots` (normalised paths relative to `mount`; a root
    /// inside another's subtree is walked once), with its id and its processes. Read only;
    /// symlinks are not followed (`lstat`, and d_type says directory). A directory removed during
    /// the walk is left out.
    public static func subtrees(mount: String, roots: [String]) -> [String: ObservedCgroup2Members.Directory] {
        var out: [String: ObservedCgroup2Members.Directory] = [:]
        // Shallowest first, so a root below another one is already in `out` when its turn comes.
        var pending = roots.sorted { $0.split(separator: "/").count < $1.split(separator: "/").count }
        pending.reverse()
        while let path = pending.popLast() {
            guard out[path] == nil, let id = id(mount: mount, path: path) else { continue }
            let full = path.isEmpty ? mount : mount + "/" + path
            let pids = (Files.readString(full + "/cgroup.procs") ?? "").split(whereSeparator: \.isWhitespace)
                .compactMap { Int32($0) }
            out[path] = ObservedCgroup2Members.Directory(id: id.id, pids: pids)
            for child in Syscall.entries(at: full, directoriesOnly: true) {
                pending.append(path.isEmpty ? child : path + "/" + child)
            }
        }
        return out
    }
}

extension Cgroup2Mount {
    /// `echo PID > MOUNT/PATH/cgroup.procs`: moves process `pid` into the cgroup at `path` (relative
    /// to `mount`, normalised). The one write netshape makes in the cgroup v2 tree: `run` starting a
    /// command in a path class's directory, as the operator asked. One write(2), as cgroupfs takes
    /// a pid; the kernel's errno is kept (EBUSY: the cgroup has controllers enabled for its children
    /// and so may hold no process itself; EOPNOTSUPP: a domain cgroup inside a threaded subtree;
    /// ENOENT: it is gone).
    ///
    /// `id`: the cgroup id the caller checked (the one the classifier's map holds). The directory
    /// is opened once, its id compared, and `cgroup.procs` opened through that descriptor: a
    /// directory removed and made again after the check (a restarted unit) is another cgroup, with
    /// an id the map does not hold, and a process written into it would run unshaped.
    public static func enter(pid: Int32, mount: String, path: String, id expected: UInt64? = nil) throws {
        try enter(pid: pid, mount: mount, path: path, id: expected, write: Glibc.write)
    }

    static func enter(
        pid: Int32, mount: String, path: String, id expected: UInt64?, write: Syscall.WriteCall
    ) throws {
        let dir = path.isEmpty ? mount : mount + "/" + path
        let file = dir + "/cgroup.procs"
        let (dfd, e) = sysResult { open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        guard dfd >= 0 else {
            throw KernelError(.cgroup, "open(\(dir))", errno: e, reason: "\(dir) is not a cgroup directory")
        }
        defer { close(dfd) }
        var st = stat()
        _ = try sys("fstat(\(dir))") { fstat(dfd, &st) }
        if let expected, UInt64(st.st_ino) != expected {
            throw KernelError(
                .cgroup, "open(\(dir))", errno: ESTALE,
                reason: "\(dir) is cgroup id \(st.st_ino) now, not \(expected) as checked: it was removed and made "
                    + "again, and the classifier's map does not hold the new id (run netshape apply, or let the "
                    + "daemon map it, then run again)")
        }
        let fd = try sys("open(\(file))") { openat(dfd, "cgroup.procs", O_WRONLY | O_CLOEXEC | O_NOFOLLOW) }
        defer { close(fd) }
        do {
            try Syscall.writeOnce(fd, Array(String(pid).utf8), what: file, write: write)
        } catch let e as KernelError where e.errno == EBUSY {
            throw KernelError(
                .cgroup, e.operation, errno: EBUSY,
                reason: "\(dir) has controllers enabled for its child cgroups, and cgroup v2 lets such a cgroup "
                    + "hold no process of its own: name a leaf cgroup below it in the rule")
        } catch let e as KernelError where e.errno == EOPNOTSUPP {
            let type = Files.readString(dir + "/cgroup.type")?.split(whereSeparator: \.isWhitespace)
                .joined(separator: " ")
            throw KernelError(
                .cgroup, e.operation, errno: EOPNOTSUPP,
                reason: "\(dir) cannot hold processes (its cgroup.type is \(type.map { "\"\($0)\"" } ?? "unknown"); "
                    + "a domain cgroup inside a threaded subtree is \"domain invalid\" and takes none): name a "
                    + "cgroup that can, or make it threaded")
        }
    }
}
