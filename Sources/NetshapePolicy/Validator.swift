import NetshapeCore

struct Validator {
    let file: String
    let locator: any PolicyLocating
    var diagnostics: [PolicyDiagnostic] = []
    /// Known keys some unknown key was suggested for, per table path: a misspelt required key is
    /// reported once, as a typo, not a second time as missing.
    var suggested: Set<String> = []

    static let topKeys = ["version", "settings", "namespace"]
    static let settingsKeys = ["classifier", "cgroup_root", "leaf", "sock_create"]
    static let namespaceKeys = [
        "name", "netns", "device", "egress", "ingress", "default", "leaf", "provision", "class",
        "containers",
    ]
    static let provisionKeys = ["address", "host_device", "host_address", "bridge", "gateway"]
    static let classKeys = ["name", "rate", "ceil", "burst", "cburst", "priority", "leaf", "match"]
    static let matchKeys = ["comm", "exe", "user", "group", "cmdline", "cgroup", "pid"]

    mutating func error(_ path: [String], _ message: String) {
        let pos = locator.position(of: path)
        let key = path.filter { Int($0) == nil }.joined(separator: ".")
        var d = PolicyDiagnostic(file: file, position: pos, key: key, message: message)
        d.path = path
        diagnostics.append(d)
    }

    /// Reports keys of `table` not in `known`, suggesting the closest known key.
    mutating func checkKeys(_ table: PolicyTable, _ path: [String], _ known: [String], what: String) {
        for key in table.keys where !known.contains(key) {
            var msg = "unknown key '\(key)' in \(what)"
            if let s = suggestion(for: key, among: known) {
                msg += "; did you mean '\(s)'?"
                suggested.insert((path + [s]).joined(separator: "."))
            }
            error(path + [key], msg)
        }
    }

    func wasSuggested(_ path: [String], _ key: String) -> Bool {
        suggested.contains((path + [key]).joined(separator: "."))
    }

    // MARK: - Top level

    mutating func policy(_ t: PolicyTable) -> Policy {
        checkKeys(t, [], Self.topKeys, what: "the policy")
        if let v = t["version"] {
            if v.int != 1 {
                error(
                    ["version"], "version must be 1 (this netshape reads policy version 1), found \(v.debugDescription)"
                )
            }
        } else if !wasSuggested([], "version") {
            error([], "missing 'version = 1' at the top of the policy")
        }
        var settings = Settings()
        if let s = t["settings"] {
            if let st = s.table {
                settings = self.settings(st)
            } else {
                error(["settings"], "settings must be a table ([settings])")
            }
        }
        var namespaces: [NamespacePolicy] = []
        if let n = t["namespace"] {
            if let arr = n.array, arr.allSatisfy({ $0.table != nil }) {
                if arr.count == 0 { error(["namespace"], "at least one [[namespace]] is required") }
                for (i, item) in arr.enumerated() {
                    if let ns = namespace(item.table ?? PolicyTable(), ["namespace", String(i)]) {
                        namespaces.append(ns)
                    }
                }
            } else {
                error(["namespace"], "namespace must be an array of tables ([[namespace]])")
            }
        } else {
            error([], "the policy names no namespace: add at least one [[namespace]]")
        }
        var seen: [String: Int] = [:]
        for (i, ns) in namespaces.enumerated() {
            if seen[ns.name] != nil {
                error(["namespace", String(i), "name"], "duplicate namespace name \"\(ns.name)\"")
            }
            seen[ns.name] = i
        }
        return Policy(settings: settings, namespaces: namespaces, source: file)
    }

    mutating func settings(_ t: PolicyTable) -> Settings {
        checkKeys(t, ["settings"], Self.settingsKeys, what: "[settings]")
        var s = Settings()
        if let c = string(t, ["settings"], "classifier") {
            if let v = ClassifierChoice(rawValue: c) {
                s.classifier = v
            } else {
                error(
                    ["settings", "classifier"], "classifier must be one of \"auto\", \"cgroup\", \"bpf\", not \"\(c)\"")
            }
        }
        if let r = string(t, ["settings"], "cgroup_root") {
            if !r.hasPrefix("/") || r.split(separator: "/").contains("..") || r.utf8.contains(0) {
                error(["settings", "cgroup_root"], "cgroup_root must be an absolute path without '..', not \"\(r)\"")
            } else {
                s.cgroupRoot = r
            }
        }
        if let l = leaf(t, ["settings"]) { s.leaf = l }
        if let v = string(t, ["settings"], "sock_create") {
            if v == "auto" || v == "off" {
                s.sockCreate = v == "auto"
            } else {
                error(["settings", "sock_create"], "sock_create must be \"auto\" or \"off\", not \"\(v)\"")
            }
        }
        return s
    }

    mutating func leaf(_ t: PolicyTable, _ path: [String]) -> LeafChoice? {
        guard let l = string(t, path, "leaf") else { return nil }
        if let v = LeafChoice(rawValue: l) { return v }
        let all = LeafChoice.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
        var msg = "leaf must be one of \(all), not \"\(l)\""
        if let s = suggestion(for: l, among: LeafChoice.allCases.map(\.rawValue)) { msg += "; did you mean \"\(s)\"?" }
        error(path + ["leaf"], msg)
        return nil
    }
}
