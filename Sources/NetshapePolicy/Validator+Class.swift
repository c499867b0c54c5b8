import NetshapeCore

extension Validator {
    // MARK: - Classes

    mutating func `class`(_ t: PolicyTable, _ path: [String], egress: Rate?, nsLabel: String) -> ClassPolicy? {
        checkKeys(t, path, Self.classKeys, what: "[[namespace.class]]")
        let name = string(t, path, "name")
        if name == nil && t["name"] == nil && !wasSuggested(path, "name") {
            error(path, "\(nsLabel): [[namespace.class]] needs a name")
        }
        if let n = name, !isValidName(n) {
            error(
                path + ["name"],
                "\(nsLabel): class name \"\(n)\" is not allowed: use 1-32 of a-z 0-9 _ . - starting with a letter or digit (it becomes a cgroup directory)"
            )
        }
        let label = "\(nsLabel), class \"\(name ?? "?")\""
        var rate: Rate?
        if t["rate"] == nil {
            if !wasSuggested(path, "rate") { error(path, "\(label) needs a rate (rate = \"10mbit\")") }
        } else {
            rate = self.rate(t, path, "rate", of: egress, label: label)
        }
        let ceil = t["ceil"] == nil ? nil : self.rate(t, path, "ceil", of: egress, label: label)
        if let r = rate, let c = ceil, c < r {
            error(
                path + ["ceil"],
                "\(label): ceil \(c) is below rate \(r); a class may borrow up to its ceil, so ceil must be at least rate"
            )
        }
        if let c = ceil, let e = egress, c > e {
            error(path + ["ceil"], "\(label): ceil \(c) is above the namespace egress \(e), which caps every class")
        }
        let burst = size(t, path, "burst", rate: rate, label: label)
        let cburst = size(t, path, "cburst", rate: ceil ?? egress, label: label)
        var priority = 4
        if let p = t["priority"] {
            if let i = p.int, (0...7).contains(i) {
                priority = i
            } else {
                error(
                    path + ["priority"],
                    "\(label): priority must be an integer from 0 (served first) to 7, not \(p.debugDescription)")
            }
        }
        let leafChoice = leaf(t, path)
        var rules = MatchRules()
        if let m = t["match"] {
            if let mt = m.table {
                rules = match(mt, path + ["match"], label: label)
            } else {
                error(path + ["match"], "\(label): match must be a table (match.comm = [\"nginx\"])")
            }
        }
        guard let n = name, let r = rate else { return nil }
        return ClassPolicy(
            name: n, rate: r, ceil: ceil, burst: burst, cburst: cburst, priority: priority,
            leaf: leafChoice, match: rules)
    }

    mutating func match(_ t: PolicyTable, _ path: [String], label: String) -> MatchRules {
        checkKeys(t, path, Self.matchKeys, what: "match")
        var m = MatchRules()
        m.comm = strings(t, path, "comm", label: label)
        for c in m.comm where c.utf8.count > 15 {
            error(
                path + ["comm"],
                "\(label): match.comm \"\(c)\" is longer than 15 bytes, and the kernel truncates /proc/PID/comm to 15: it could never match (use match.exe or match.cmdline)"
            )
        }
        m.exe = strings(t, path, "exe", label: label)
        for e in m.exe where !e.hasPrefix("/") {
            error(path + ["exe"], "\(label): match.exe \"\(e)\" must be an absolute path (globs with * allowed)")
        }
        m.cmdline = strings(t, path, "cmdline", label: label)
        for c in m.cmdline {
            do { _ = try Regex(c) } catch {
                self.error(
                    path + ["cmdline"], "\(label): match.cmdline \"\(c)\" is not a valid regular expression: \(error)")
            }
        }
        m.cgroup = strings(t, path, "cgroup", label: label)
        for c in m.cgroup where c.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) {
            // The path is looked up under the cgroup2 mount: `..` would name a directory outside it.
            error(path + ["cgroup"], "\(label): match.cgroup \"\(c)\" must not contain '.' or '..' components")
        }
        m.user = principals(t, path, "user", label: label)
        m.group = principals(t, path, "group", label: label)
        if let p = t["pid"] {
            let values = p.array ?? [p]
            for v in values {
                if let i = v.int, i > 0, i <= Int(Int32.max) {
                    m.pid.append(Int32(i))
                } else {
                    error(
                        path + ["pid"],
                        "\(label): match.pid takes process ids (positive integers), not \(v.debugDescription)")
                }
            }
        }
        return m
    }
}
