internal import CNetshapeShim
import Glibc
import NetshapeCore
import Synchronization

/// One line of /proc/self/mountinfo, as far as netshape needs it.
public struct MountInfoEntry: Equatable, Sendable {
    public var root: String
    public var mountPoint: String
    public var fsType: String
    public var superOptions: [String]

    /// Parses mountinfo text (proc(5)): `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTS`.
    /// Every observation reads it three times (net_cls, cgroup2, the sock_create hook): only the
    /// four fields used become Strings, and only a field with a backslash is unescaped.
    public static func parse(_ text: String) -> [MountInfoEntry] {
        text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            guard let dash = f.firstIndex(of: "-"), dash >= 6, f.count > dash + 3 else { return nil }
            return MountInfoEntry(
                root: unescape(f[3]), mountPoint: unescape(f[4]), fsType: String(f[dash + 1]),
                superOptions: f[dash + 3].split(separator: ",").map(String.init))
        }
    }

    /// mountinfo escapes blanks, tabs, newlines and backslashes as `\ooo`.
    static func unescape(_ s: Substring) -> String {
        s.utf8.contains(0x5C) ? unescape(String(s)) : String(s)
    }

    static func unescape(_ s: String) -> String {
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == 0x5C, i + 3 < b.count,
                let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8)
            {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The mount point of the net_cls v1 hierarchy's root, if mounted.
    public static func netClsMount(in entries: [MountInfoEntry]) -> String? {
        entries.first { $0.fsType == "cgroup" && $0.superOptions.contains("net_cls") && $0.root == "/" }?.mountPoint
    }
}

/// The cgroup v1 net_cls hierarchy: where class cgroups live and how processes are moved.
///
/// Takes its mount point as a parameter (found in /proc/self/mountinfo, or mounted by `mount()`),
/// so tests can point it at a scratch mount. Every path is built from validated names and walked
/// with `O_NOFOLLOW` one component at a time, so a symlink planted inside the tree can never lead
/// a write outside it.
public final class NetClsHierarchy {
    /// The mount point (e.g. /sys/fs/cgroup/net_cls).
    public let root: String

    public init(root: String) { self.root = root }

    /// Finds the mounted hierarchy (or the configured one), without mounting anything.
    public static func find(configured: String?) -> NetClsHierarchy? {
        let entries = MountInfoEntry.parse(Files.readString("/proc/self/mountinfo") ?? "")
        if let c = configured {
            let isNetCls = entries.contains {
                $0.mountPoint == c && $0.fsType == "cgroup" && $0.superOptions.contains("net_cls")
            }
            return isNetCls ? NetClsHierarchy(root: c) : nil
        }
        return MountInfoEntry.netClsMount(in: entries).map(NetClsHierarchy.init(root:))
    }

    /// Finds the hierarchy, or mounts it: at `configured`, else /sys/fs/cgroup/net_cls when
    /// /sys/fs/cgroup is the usual tmpfs of v1 controllers, else /run/netshape/net_cls (on a
    /// cgroup2-only host, a mkdir under /sys/fs/cgroup would create a v2 cgroup instead).
    public static func findOrMount(configured: String?, state: StateStore? = nil) throws -> NetClsHierarchy {
        if let h = find(configured: configured) { return h }
        let target: String
        var created = false
        if let c = configured {
            created = try checkMountTarget(c)
            target = c
        } else if netshape_statfs_type("/sys/fs/cgroup") == 0x0102_1994 /* TMPFS_MAGIC */ {
            target = "/sys/fs/cgroup/net_cls"
        } else {
            target = "/run/netshape/net_cls"
        }
        try makeDirectories(target)
        // net_cls is often co-mounted with net_prio; the kernel refuses (EBUSY) a mount whose
        // controller set differs from the hierarchy the controller already belongs to.
        var lastError: Int32 = 0
        for options in ["net_cls", "net_cls,net_prio"] {
            if netshape_mount_cgroup_v1(target, options) == 0 {
                if configured != nil {
                    // Recorded so that `reset` can take the mount (and a directory it made) away again.
                    let store = state ?? StateStore()
                    var mounts = store.loadMounts()
                    mounts.removeAll { $0.path == target }
                    mounts.append(MountRecord(path: target, createdDirectory: created))
                    try store.saveMounts(mounts)
                }
                return NetClsHierarchy(root: target)
            }
            lastError = errno
        }
        if created { rmdir(target) }
        throw KernelError(
            .cgroup, "mount -t cgroup -o net_cls cgroup \(target)", errno: lastError,
            reason: String(cString: strerror(lastError))
                + "; the kernel must offer the cgroup v1 net_cls controller (CONFIG_CGROUP_NET_CLASSID, and no "
                + "cgroup_no_v1=net_cls or =all on the kernel command line)")
    }

    /// `cgroup_root` that is not a net_cls mount yet: netshape mounts there only when it is a
    /// missing or empty directory that nothing is mounted on, so that the mount covers nothing and
    /// `reset` can remove it. Returns whether netshape had to create the directory.
    static func checkMountTarget(_ path: String) throws -> Bool {
        func refuse(_ why: String) -> KernelError {
            KernelError(
                .cgroup, "cgroup_root \(path)", errno: EEXIST,
                reason:
                    "\(why); netshape mounts net_cls only on an empty directory (or uses an existing net_cls mount there), so that the mount hides nothing and reset can remove it"
            )
        }
        let mounts = MountInfoEntry.parse(Files.readString("/proc/self/mountinfo") ?? "")
        if let m = mounts.last(where: { $0.mountPoint == path }) {
            throw refuse("it is a mount point of \(m.fsType), not of the net_cls hierarchy")
        }
        var st = stat()
        let e = sysResult { lstat(path, &st) }.errno
        guard e == 0 else {
            guard e == ENOENT else { throw KernelError.syscall("lstat(\(path))", e) }
            if let other = MountInfoEntry.netClsMount(in: mounts) {
                throw refuse(
                    "the net_cls hierarchy is already mounted at \(other): set cgroup_root = \"\(other)\" or leave it out"
                )
            }
            try makeDirectories(path)
            return true
        }
        guard st.st_mode & S_IFMT == S_IFDIR else {
            throw refuse(st.st_mode & S_IFMT == S_IFLNK ? "it is a symlink" : "it is not a directory")
        }
        let entries = Files.list(path)
        if !entries.isEmpty {
            throw refuse("it is a directory with \(entries.count) entries (e.g. \(entries.sorted()[0]))")
        }
        // There is one net_cls hierarchy per machine: mounted again here it would show the tree
        // already mounted elsewhere (not an empty one), cgroups netshape's observation never saw.
        if let other = MountInfoEntry.netClsMount(in: mounts) {
            throw refuse(
                "the net_cls hierarchy is already mounted at \(other): set cgroup_root = \"\(other)\" or leave it out")
        }
        return false
    }

    /// After `reset`: unmounts each hierarchy netshape mounted at a `cgroup_root` once no netshape
    /// cgroup is left in it, and removes the directory if netshape made it. Returns what it removed.
    public static func releaseUnusedMounts(state: StateStore) -> [String] {
        let recorded = state.loadMounts()
        if recorded.isEmpty { return [] }
        var mounts = recorded
        var released: [String] = []
        let entries = MountInfoEntry.parse(Files.readString("/proc/self/mountinfo") ?? "")
        mounts.removeAll { m in
            guard entries.contains(where: { $0.mountPoint == m.path && $0.superOptions.contains("net_cls") }) else {
                return true  // gone already (reboot, someone unmounted it): forget it
            }
            let ours = "\(m.path)/netshape"
            guard Files.list(ours).allSatisfy({ !Files.isDirectory("\(ours)/\($0)") }) else { return false }
            rmdir(ours)
            guard netshape_umount_detach(m.path) == 0 else { return false }
            if m.createdDirectory { rmdir(m.path) }
            released.append(m.path)
            return true
        }
        if mounts != recorded { try? state.saveMounts(mounts) }
        return released
    }

    static func makeDirectories(_ path: String) throws {
        var current = ""
        for comp in path.split(separator: "/") {
            current += "/" + comp
            let e = sysResult { mkdir(current, 0o755) }.errno
            if e != 0 && e != EEXIST { throw KernelError.syscall("mkdir(\(current))", e) }
        }
    }

    // MARK: - Safe path walking

    /// Opens the directory `relative` (components below the root) without following symlinks.
    func openDirectory(_ relative: String) throws -> Int32 {
        var fd = try sys("open(\(root))") { open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        for comp in relative.split(separator: "/") {
            let c = String(comp)
            guard c != "..", c != "." else {
                close(fd)
                throw KernelError(
                    .cgroup, "open(\(root)/\(relative))", errno: EINVAL, reason: "refusing '..' in a cgroup path")
            }
            let next = openat(fd, c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            let e = errno
            close(fd)
            guard next >= 0 else {
                throw KernelError.syscall("open(\(root)/\(relative)) at \(c)", e == ELOOP || e == ENOTDIR ? ELOOP : e)
            }
            fd = next
        }
        return fd
    }

    /// Splits `a/b/c` into (`a/b`, `c`).
    static func split(_ relative: String) -> (String, String) {
        guard let slash = relative.lastIndex(of: "/") else { return ("", relative) }
        return (String(relative[..<slash]), String(relative[relative.index(after: slash)...]))
    }

    func writeFile(_ relative: String, _ file: String, _ text: String) throws {
        let dir = try openDirectory(relative)
        defer { close(dir) }
        let path = "\(root)/\(relative)/\(file)"
        let fd = try sys("open(\(path))") { openat(dir, file, O_WRONLY | O_NOFOLLOW | O_CLOEXEC) }
        defer { close(fd) }
        // cgroupfs acts on each write(2) and reports a refused pid or classid there, not at open.
        try Syscall.writeOnce(fd, Array(text.utf8), what: "\(path), \(text)")
    }

    func readFile(_ relative: String, _ file: String) -> String? {
        guard let dir = try? openDirectory(relative) else { return nil }
        defer { close(dir) }
        return Files.read(at: dir, file)
    }

    // MARK: - Operations

    /// `mkdir <root>/PATH` and, when `classid` is not 0, `echo ID > PATH/net_cls.classid`.
    public func create(_ relative: String, classid: TCHandle) throws {
        let (parent, name) = Self.split(relative)
        let dir = try openDirectory(parent)
        defer { close(dir) }
        try sys("mkdir(\(root)/\(relative))") { mkdirat(dir, name, 0o755) }
        if classid.raw != 0 { try setClassID(relative, classid) }
    }

    /// `echo ID > <root>/PATH/net_cls.classid`. Written in decimal, the form the kernel prints back.
    public func setClassID(_ relative: String, _ classid: TCHandle) throws {
        try writeFile(relative, "net_cls.classid", String(classid.raw))
    }

    /// `rmdir <root>/PATH`.
    public func remove(_ relative: String) throws {
        let (parent, name) = Self.split(relative)
        let dir = try openDirectory(parent)
        defer { close(dir) }
        try sys("rmdir(\(root)/\(relative))") { unlinkat(dir, name, AT_REMOVEDIR) }
    }

    /// `echo PID > <root>/PATH/cgroup.procs` (the whole process, all its threads; the kernel retags
    /// the sockets in its fd table with the new classid).
    public func move(pid: Int32, to relative: String) throws {
        try writeFile(relative, "cgroup.procs", String(pid))
    }

    /// The classid of a cgroup (the kernel prints it in decimal).
    public func classid(_ relative: String) -> TCHandle? {
        guard let text = readFile(relative, "net_cls.classid"),
            let v = UInt32(text.split(whereSeparator: \.isWhitespace).first ?? "")
        else { return nil }
        return TCHandle(raw: v)
    }

    /// Member processes of a cgroup.
    public func procs(_ relative: String) -> [Int32] {
        (readFile(relative, "cgroup.procs") ?? "").split(whereSeparator: \.isWhitespace).compactMap { Int32($0) }
    }

    /// The cgroups of `namespaces` under `<root>/netshape` (and that directory itself), by relative
    /// path, or only the cgroups in `only` (each read afresh: there or not). `cgroup.procs` is left
    /// unread for the paths in `withoutMembers`.
    ///
    /// A class cgroup costs four syscalls: its files are opened relative to the namespace
    /// directory's fd (`CLASS/net_cls.classid`), read with one read(2), and a subdirectory listing
    /// is read only when the directory's link count says there is one (kernfs counts
    /// subdirectories in st_nlink). The two-component path cannot be redirected: the name came from
    /// readdir as a directory, and cgroupfs (kernfs) cannot hold symlinks; the namespace directory
    /// itself is opened with O_NOFOLLOW.
    public func listNetshape(
        namespaces: [String], only: Set<String>? = nil, withoutMembers: Set<String> = []
    ) -> [String: ObservedCgroup] {
        if let only { return cgroups(only, withoutMembers: withoutMembers) }
        let l = listing(namespaces: namespaces, withoutMembers: withoutMembers)
        l.work()
        return l.finish()
    }

    /// `listNetshape` of `namespaces` in two steps: the directories are opened and listed now; the
    /// class cgroups are read by `Listing.work`, which several threads can run at once.
    func listing(namespaces: [String], withoutMembers: Set<String>) -> Listing {
        let l = Listing()
        guard let top = try? openDirectory(CgroupPaths.top) else { return l }
        l.descriptors.append(top)
        func directory(_ fd: Int32, _ path: String) -> ObservedCgroup {
            Self.cgroup(at: fd, "", path, members: !withoutMembers.contains(path))
                ?? ObservedCgroup(path: path, classid: .unspecified)
        }
        l.directories[CgroupPaths.top] = directory(top, CgroupPaths.top)
        var items: [Listing.Item] = []
        for ns in namespaces {
            let nsfd = openat(top, ns, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard nsfd >= 0 else { continue }
            l.descriptors.append(nsfd)
            let nsPath = CgroupPaths.namespace(ns)
            let classes = Syscall.entries(of: nsfd, directoriesOnly: true)
            l.directories[nsPath] = directory(nsfd, nsPath)
            l.directories[nsPath]?.children = classes
            for cls in classes {
                let path = CgroupPaths.class(cls, in: ns)
                items.append(Listing.Item(dir: nsfd, name: cls, path: path, members: !withoutMembers.contains(path)))
            }
        }
        l.items = items
        l.results = .allocate(capacity: items.count)
        l.results.initialize(repeating: nil)
        return l
    }

    /// The class cgroups of a listing, handed out one at a time to whichever thread asks next
    /// (`work`), each read into its own slot; `finish` gathers them once every worker is done.
    final class Listing: @unchecked Sendable {
        struct Item {
            let dir: Int32
            let name: String
            let path: String
            let members: Bool
        }
        var directories: [String: ObservedCgroup] = [:]
        var descriptors: [Int32] = []
        var items: [Item] = []
        var results = UnsafeMutableBufferPointer<ObservedCgroup?>(start: nil, count: 0)
        let next = Atomic<Int>(0)

        /// Reads class cgroups until none is left. Threads share the items, never a slot.
        func work() {
            while true {
                let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
                guard i < items.count else { return }
                let item = items[i]
                // nil: removed since the listing.
                results[i] = NetClsHierarchy.cgroup(in: item.dir, item.name, item.path, members: item.members)
            }
        }

        /// Everything read, by path. Only after every `work` has returned (joined threads).
        func finish() -> [String: ObservedCgroup] {
            var out = directories
            out.reserveCapacity(directories.count + items.count)
            for (i, item) in items.enumerated() { out[item.path] = results[i] }
            return out
        }

        deinit {
            for fd in descriptors { close(fd) }
            if results.baseAddress != nil { results.deinitialize().deallocate() }
        }
    }

    /// The cgroups at `paths` that are there, each parent directory opened once.
    func cgroups(_ paths: Set<String>, withoutMembers: Set<String>) -> [String: ObservedCgroup] {
        var out: [String: ObservedCgroup] = [:]
        for (parent, names) in Dictionary(grouping: paths.map(Self.split), by: \.0) {
            guard let dir = try? openDirectory(parent) else { continue }
            defer { close(dir) }
            for (_, name) in names {
                let path = parent.isEmpty ? name : parent + "/" + name
                out[path] = Self.cgroup(in: dir, name, path, members: !withoutMembers.contains(path))
            }
        }
        return out
    }

    /// The cgroup directory `name` in `dir`, with the directories below it (netshape never makes
    /// cgroups below a class: any there are someone else's); nil when it is not there.
    static func cgroup(in dir: Int32, _ name: String, _ path: String, members: Bool) -> ObservedCgroup? {
        var st = stat()
        guard fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & S_IFMT == S_IFDIR else { return nil }
        var cg =
            cgroup(at: dir, name + "/", path, members: members) ?? ObservedCgroup(path: path, classid: .unspecified)
        // kernfs counts subdirectories in a directory's link count: list only when there are some.
        if st.st_nlink > 2 {
            let fd = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if fd >= 0 {
                cg.children = Syscall.entries(of: fd, directoriesOnly: true)
                close(fd)
            }
        }
        return cg
    }

    /// The classid (and members) of the cgroup at `dir`/`prefix`; nil when it has no classid file
    /// (not a net_cls cgroup, or gone).
    static func cgroup(at dir: Int32, _ prefix: String, _ path: String, members: Bool) -> ObservedCgroup? {
        guard let text = readShort(dir, prefix + "net_cls.classid") else { return nil }
        let id = decimal(text) ?? 0
        var pids: [Int32] = []
        if members {
            pids = (Files.read(at: dir, prefix + "cgroup.procs") ?? "").split(whereSeparator: \.isWhitespace)
                .compactMap { Int32($0) }
        }
        return ObservedCgroup(path: path, classid: TCHandle(raw: id), pids: pids)
    }

    /// The decimal number a cgroupfs file starts with (after blanks), ending at a blank or the end
    /// of the text (`"65552\n"`); nil otherwise. Byte by byte: splitting the text into Characters
    /// would ask Unicode tables about every byte of a thousand files.
    static func decimal(_ text: String) -> UInt32? {
        var value: UInt32 = 0
        var digits = 0
        for b in text.utf8 {
            let blank = b == 0x20 || (0x09...0x0D).contains(b)
            if blank {
                if digits > 0 { break }
                continue
            }
            guard (0x30...0x39).contains(b), let next = value.appendingDecimalDigit(b) else { return nil }
            value = next
            digits += 1
        }
        return digits > 0 ? value : nil
    }

    /// A small cgroupfs file in one read(2): seq_file hands the whole text to a buffer that holds it.
    static func readShort(_ dir: Int32, _ name: String) -> String? {
        let fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buf = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        return withUnsafeMutableBytes(of: &buf) { b -> String? in
            let n = sysResult { read(fd, b.baseAddress, b.count) }.value
            guard n >= 0 else { return nil }
            // Longer than a classid ever is: read the rest the ordinary way.
            if n == b.count {
                return String(decoding: b, as: UTF8.self)
                    + String(decoding: (try? Syscall.readToEnd(fd, what: name)) ?? [], as: UTF8.self)
            }
            return String(decoding: b.prefix(n), as: UTF8.self)
        }
    }
}

/// Fast cgroup migrations for the daemon.
///
/// Moving a process between cgroups takes the kernel's global cgroup_threadgroup_rwsem for writing;
/// after an idle period that waits for an RCU grace period: 6–15 ms per move on the project's
/// machines, against ~0.1 ms while moves follow each other closely. Any cgroup hierarchy mounted
/// with `favordynmods` (Linux 6.0+) keeps that lock in its fast mode (measured 0.25–0.43 ms per move
/// after idle), at the price of a slightly dearer fork and exit (within noise here). The daemon
/// mounts an empty named v1 hierarchy with the option while it runs and unmounts it when it stops.
///
/// The mount lives in the daemon's state directory and is owned through a `flock` held for the
/// daemon's life: a second daemon of the same directory finds the lock taken and leaves the mount
/// alone (it used to adopt it and unmount it under the first when it stopped), while a daemon that
/// finds the lock free and the mount there knows its owner died without unmounting, and adopts it.
public final class FastMigrations {
    public let mountPoint: String
    let lockFD: Int32

    private init(mountPoint: String, lockFD: Int32) {
        self.mountPoint = mountPoint
        self.lockFD = lockFD
    }

    /// True when some cgroup hierarchy already has `favordynmods`.
    public static var active: Bool {
        MountInfoEntry.parse(Files.readString("/proc/self/mountinfo") ?? "").contains {
            ($0.fsType == "cgroup" || $0.fsType == "cgroup2") && $0.superOptions.contains("favordynmods")
        }
    }

    /// Mounts (or adopts) the helper hierarchy under `stateDirectory`; nil when it is not this
    /// daemon's to mount: another live daemon of the directory owns it, or some hierarchy already
    /// has fast mode on.
    public static func enable(stateDirectory: String) throws -> FastMigrations? {
        let mountPoint = "\(stateDirectory)/dynmods"
        try NetClsHierarchy.makeDirectories(stateDirectory)
        let lockPath = "\(stateDirectory)/dynmods.lock"
        let fd = try sys("open(\(lockPath))") { open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600) }
        let locked = sysResult { flock(fd, LOCK_EX | LOCK_NB) }
        guard locked.errno == 0 else {
            close(fd)
            if locked.errno == EWOULDBLOCK { return nil }
            throw KernelError.syscall("flock(\(lockPath), LOCK_EX|LOCK_NB)", locked.errno)
        }
        let mounts = MountInfoEntry.parse(Files.readString("/proc/self/mountinfo") ?? "")
        if mounts.contains(where: { $0.mountPoint == mountPoint && $0.superOptions.contains("name=netshape-dynmods") })
        {
            return FastMigrations(mountPoint: mountPoint, lockFD: fd)
        }
        if active {
            close(fd)
            return nil
        }
        do {
            try NetClsHierarchy.makeDirectories(mountPoint)
            try sys("mount -t cgroup -o none,name=netshape-dynmods,favordynmods cgroup \(mountPoint)") {
                netshape_mount_cgroup_v1(mountPoint, "none,name=netshape-dynmods,favordynmods")
            }
        } catch {
            close(fd)
            throw error
        }
        return FastMigrations(mountPoint: mountPoint, lockFD: fd)
    }

    /// Unmounts the helper hierarchy (the kernel leaves fast mode when its root goes away), then
    /// gives up ownership.
    public func disable() {
        _ = netshape_umount_detach(mountPoint)
        rmdir(mountPoint)
        close(lockFD)
    }
}

extension FixedWidthInteger where Self: UnsignedInteger {
    /// `self × 10 +` the ASCII digit `b`, nil on overflow: the step of the byte-wise decimal
    /// readers (cgroupfs files, the ownership record).
    func appendingDecimalDigit(_ b: UInt8) -> Self? {
        let (times10, o1) = multipliedReportingOverflow(by: 10)
        let (sum, o2) = times10.addingReportingOverflow(Self(b - 0x30))
        return o1 || o2 ? nil : sum
    }
}
