import Glibc
import NetshapeCore

/// Reads processes from /proc: identity, the rule inputs (comm, exe, uid, gid, cmdline, cgroup)
/// and which network namespace each lives in. Processes that exit mid-scan are skipped.
public struct ProcScanner: Sendable {
    public let procRoot: String
    public init(procRoot: String = "/proc") { self.procRoot = procRoot }

    /// PF_KTHREAD in /proc/PID/stat's flags: kernel threads cannot be moved between cgroups.
    static let kernelThreadFlag: UInt = 0x0020_0000

    /// Every user process, grouped by network namespace id (`st_dev:st_ino` of /proc/PID/ns/net).
    public func scan() -> [String: [ProcessInfo]] {
        var out: [String: [ProcessInfo]] = [:]
        for name in Files.list(procRoot) {
            guard let pid = Int32(name), let (ns, info) = process(pid) else { continue }
            out[ns, default: []].append(info)
        }
        return out
    }

    /// The fields a set of rules reads, so the exec fast path reads no more of /proc than it must.
    public struct Fields: OptionSet, Sendable {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }
        public static let comm = Fields(rawValue: 1)
        public static let exe = Fields(rawValue: 2)
        public static let ids = Fields(rawValue: 4)
        public static let cmdline = Fields(rawValue: 8)
        public static let cgroup = Fields(rawValue: 16)
        public static let all: Fields = [.comm, .exe, .ids, .cmdline, .cgroup]

        /// What `rules` need.
        public init(for rules: MatchRules) {
            self = []
            if !rules.comm.isEmpty { insert(.comm) }
            if !rules.exe.isEmpty { insert(.exe) }
            if !rules.user.isEmpty || !rules.group.isEmpty { insert(.ids) }
            if !rules.cmdline.isEmpty { insert(.cmdline) }
            if !rules.cgroup.isEmpty { insert(.cgroup) }
        }
    }

    /// The namespace id of `pid` (`st_dev:st_ino` of /proc/PID/ns/net): one stat, the fast path's filter.
    public func namespaceID(_ pid: Int32) -> String? { Files.identity("\(procRoot)/\(pid)/ns/net") }

    /// Only the given fields of `pid` (the fast path after an exec event; kernel threads never exec).
    /// The net_cls path is read only with `.cgroup`.
    public func process(_ pid: Int32, fields: Fields) -> ProcessInfo? {
        let base = "\(procRoot)/\(pid)"
        var p = ProcessInfo(pid: pid, comm: "")
        if fields.contains(.comm) {
            guard let c = Files.readString("\(base)/comm") else { return nil }
            p.comm = c.split(separator: "\n").first.map(String.init) ?? ""
        }
        if fields.contains(.exe) { p.exe = Files.readLink("\(base)/exe") }
        if fields.contains(.ids) {
            guard let status = Files.readString("\(base)/status") else { return nil }
            for line in status.split(separator: "\n") {
                let f = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
                if f.first == "Uid:", f.count > 1 { p.uid = UInt32(f[1]) ?? 0 }
                if f.first == "Gid:", f.count > 1 { p.gid = UInt32(f[1]) ?? 0 }
            }
        }
        if fields.contains(.cmdline) {
            p.cmdline = (Files.read("\(base)/cmdline") ?? []).split(separator: 0, omittingEmptySubsequences: false)
                .map { String(decoding: $0, as: UTF8.self) }.filter { !$0.isEmpty }.joined(separator: " ")
        }
        if fields.contains(.cgroup) {
            let (unified, netCls) = Self.cgroups(Files.readString("\(base)/cgroup") ?? "")
            p.cgroup = unified
            p.netCls = netCls
        }
        return p
    }

    /// One process and its namespace id, or nil when it is gone or a kernel thread.
    public func process(_ pid: Int32) -> (String, ProcessInfo)? {
        let base = "\(procRoot)/\(pid)"
        guard let stat = Files.readString("\(base)/stat"), !Self.isKernelThread(stat),
            let ns = Files.identity("\(base)/ns/net")
        else { return nil }
        let comm = (Files.readString("\(base)/comm") ?? "").split(separator: "\n").first.map(String.init) ?? ""
        var uid: UInt32 = 0
        var gid: UInt32 = 0
        for line in (Files.readString("\(base)/status") ?? "").split(separator: "\n") {
            // "Uid:\treal\teffective\tsaved\tfs": rules match the real id, as cgrules does.
            let f = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
            if f.first == "Uid:", f.count > 1 { uid = UInt32(f[1]) ?? 0 }
            if f.first == "Gid:", f.count > 1 { gid = UInt32(f[1]) ?? 0 }
        }
        let cmdline = (Files.read("\(base)/cmdline") ?? []).split(separator: 0, omittingEmptySubsequences: false)
            .map { String(decoding: $0, as: UTF8.self) }.filter { !$0.isEmpty }.joined(separator: " ")
        let (unified, netCls) = Self.cgroups(Files.readString("\(base)/cgroup") ?? "")
        return (
            ns,
            ProcessInfo(
                pid: pid, comm: comm, exe: Files.readLink("\(base)/exe"), uid: uid, gid: gid,
                cmdline: cmdline, cgroup: unified, netCls: netCls)
        )
    }

    /// From /proc/PID/cgroup: the v2 path (or the name=systemd one) and the net_cls path relative to
    /// its hierarchy ("" = the root cgroup).
    public static func cgroups(_ text: String) -> (unified: String, netCls: String) {
        var unified: String?
        var systemd: String?
        var netCls = ""
        for line in text.split(separator: "\n") {
            let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard f.count == 3 else { continue }
            let path = String(f[2])
            if f[0] == "0" && f[1].isEmpty { unified = path }
            let controllers = f[1].split(separator: ",")
            if controllers.contains("name=systemd") { systemd = path }
            if controllers.contains("net_cls") { netCls = String(path.drop { $0 == "/" }) }
        }
        return (unified ?? systemd ?? "/", netCls)
    }

    static func isKernelThread(_ stat: String) -> Bool {
        // Fields after the last ')' (comm may contain spaces and parentheses): state is the first,
        // flags the seventh.
        guard let close = stat.lastIndex(of: ")") else { return true }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 6, let flags = UInt(fields[6]) else { return true }
        return flags & kernelThreadFlag != 0
    }
}
