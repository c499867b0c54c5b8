import Glibc
import NetshapeCore

/// Reads processes from /proc: identity, the rule inputs (comm, exe, uid, gid, cmdline, cgroup)
/// and which network namespace each lives in. Processes that exit mid-scan are skipped.
public struct ProcScanner {
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
        return (ns, ProcessInfo(pid: pid, comm: comm, exe: Files.readLink("\(base)/exe"), uid: uid, gid: gid,
                                cmdline: cmdline, cgroup: unified, netCls: netCls))
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
