/// Decides which class a process belongs to. Pure: identities come pre-resolved in `users`/`groups`.
public struct ProcessMatcher: Sendable {
    let users: [String: UInt32]
    let groups: [String: UInt32]
    let cmdlineMatcher: @Sendable (String, String) -> Bool

    /// - Parameter cmdlineMatcher: `(pattern, cmdline) -> matches`; the engine passes a regex matcher.
    ///   Core keeps it injectable so that it stays free of the regex engine's platform quirks.
    public init(
        users: [String: UInt32], groups: [String: UInt32],
        cmdlineMatcher: @escaping @Sendable (String, String) -> Bool
    ) {
        self.users = users
        self.groups = groups
        self.cmdlineMatcher = cmdlineMatcher
    }

    /// True when `process` satisfies every key of `rules` (a key with no values is not a constraint).
    /// Empty rules never match: such a class only takes processes placed by hand.
    public func matches(_ rules: MatchRules, _ p: ProcessInfo) -> Bool {
        guard !rules.isEmpty else { return false }
        if !rules.pid.isEmpty && !rules.pid.contains(p.pid) { return false }
        if !rules.comm.isEmpty && !rules.comm.contains(p.comm) { return false }
        if !rules.exe.isEmpty {
            guard let exe = p.exe, rules.exe.contains(where: { glob($0, matches: exe) }) else { return false }
        }
        if !rules.user.isEmpty && !rules.user.contains(where: { resolve($0, users) == p.uid }) { return false }
        if !rules.group.isEmpty && !rules.group.contains(where: { resolve($0, groups) == p.gid }) { return false }
        if !rules.cmdline.isEmpty && !rules.cmdline.contains(where: { cmdlineMatcher($0, p.cmdline) }) {
            return false
        }
        if !rules.cgroup.isEmpty && !rules.cgroup.contains(where: { cgroupPrefix($0, matches: p.cgroup) }) {
            return false
        }
        return true
    }

    /// The net_cls class `p` must be moved into: the first class (in policy order) whose rules
    /// match, as policy.md says. nil when that class is classified by cgroup v2 path: the kernel
    /// places its sockets, and moving the process would only put a net_cls classid in the way.
    public func classify(_ p: ProcessInfo, in ns: DesiredNamespace) -> PlannedClass? {
        guard let c = ns.classes.first(where: { $0.name != nil && matches($0.match, p) }), c.classification == .netCls
        else {
            return nil
        }
        return c
    }

    func resolve(_ principal: Principal, _ table: [String: UInt32]) -> UInt32? {
        switch principal {
        case .id(let i): return i
        case .name(let n): return table[n]
        }
    }
}

/// `*` matches any run of characters (including `/`), `?` one character; everything else is literal.
public func glob(_ pattern: String, matches text: String) -> Bool {
    let p = Array(pattern.unicodeScalars)
    let t = Array(text.unicodeScalars)
    var pi = 0
    var ti = 0
    var star = -1
    var mark = 0
    while ti < t.count {
        if pi < p.count && (p[pi] == "?" || p[pi] == t[ti]) {
            pi += 1
            ti += 1
        } else if pi < p.count && p[pi] == "*" {
            star = pi
            mark = ti
            pi += 1
        } else if star >= 0 {
            pi = star + 1
            mark += 1
            ti = mark
        } else {
            return false
        }
    }
    while pi < p.count && p[pi] == "*" { pi += 1 }
    return pi == p.count
}

/// `system.slice/nginx.service` matches `/system.slice/nginx.service` and everything below it,
/// but not `/system.slice/nginx.service2`.
public func cgroupPrefix(_ prefix: String, matches path: String) -> Bool {
    let want = "/" + prefix.split(separator: "/").joined(separator: "/")
    let have = "/" + path.split(separator: "/").joined(separator: "/")
    if want == "/" { return true }
    return have == want || have.hasPrefix(want + "/")
}
