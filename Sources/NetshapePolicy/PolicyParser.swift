import NetshapeCore
internal import TOMLKit

/// One reason a policy is invalid, at a position in its file.
public struct PolicyDiagnostic: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var position: SourcePosition
    /// The key as written in the file (`rate`, `match.comm`), empty for syntax errors.
    public var key: String
    public var message: String
    /// The full path in the document (`namespace.0.class.1.rate`), for front ends that name it
    /// in their own syntax (the CNI plugin's JSON path).
    public var path: [String] = []

    /// `FILE:LINE:COL: error: MESSAGE`, the format compilers use and editors jump to.
    public var description: String { "\(file):\(position.line):\(position.column): error: \(message)" }

    public init(file: String, position: SourcePosition, key: String, message: String) {
        self.file = file
        self.position = position
        self.key = key
        self.message = message
    }
}

/// A rejected policy (exit 65, `EX_DATAERR`). Holds every problem found, in file order.
public struct PolicyError: Error, Sendable, Equatable, CustomStringConvertible {
    public var diagnostics: [PolicyDiagnostic]
    public init(diagnostics: [PolicyDiagnostic]) { self.diagnostics = diagnostics }
    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}

/// TOML text → validated `Policy`. Nothing here touches the machine.
public enum PolicyParser {
    /// Parses and validates the policy text; `file` names it in diagnostics.
    public static func parse(_ text: String, file: String) throws -> Policy {
        if let pos = nulPosition(text) {
            throw PolicyError(diagnostics: [
                PolicyDiagnostic(
                    file: file, position: pos, key: "",
                    message:
                        "the policy contains a NUL character (or a \\u0000 escape): the TOML library and the kernel would cut the string there"
                )
            ])
        }
        if let pos = strayNonASCII(text) {
            throw PolicyError(diagnostics: [
                PolicyDiagnostic(file: file, position: pos, key: "", message: strayMessage(text, at: pos))
            ])
        }
        if let (pos, message) = bracketProblem(text) {
            throw PolicyError(diagnostics: [PolicyDiagnostic(file: file, position: pos, key: "", message: message)])
        }
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let e as TOMLParseError {
            let (pos, message) = TOMLSyntaxMessage.reword(
                e.description, at: SourcePosition(line: e.source.begin.line, column: e.source.begin.column), in: text)
            throw PolicyError(diagnostics: [PolicyDiagnostic(file: file, position: pos, key: "", message: message)])
        } catch {
            throw PolicyError(diagnostics: [
                PolicyDiagnostic(
                    file: file, position: SourcePosition(line: 1, column: 1),
                    key: "", message: "TOML syntax: \(error)")
            ])
        }
        return try validate(PolicyTable(toml: table), file: file, locator: LazySourceLocator(text))
    }

    /// `match.user` and `match.group` names that do not exist here, positioned in `text`. A
    /// warning, not an error: a policy is often checked on another machine than the one it runs
    /// on, where the account exists. The rule can never match where the name is unknown.
    public static func unknownPrincipals(
        _ text: String, file: String, policy: Policy, userExists: @escaping (String) -> Bool,
        groupExists: @escaping (String) -> Bool
    ) -> [PolicyDiagnostic] {
        let locator = SourceLocator(text)
        var out: [PolicyDiagnostic] = []
        for (i, ns) in policy.namespaces.enumerated() {
            for (j, c) in ns.classes.enumerated() {
                for (key, names, exists) in [("user", c.match.user, userExists), ("group", c.match.group, groupExists)]
                {
                    for case .name(let n) in names where !exists(n) {
                        let path = ["namespace", String(i), "class", String(j), "match", key]
                        out.append(
                            PolicyDiagnostic(
                                file: file, position: locator.position(of: path), key: "match.\(key)",
                                message:
                                    "namespace \"\(ns.name)\", class \"\(c.name)\": match.\(key) \"\(n)\" is no \(key) on this machine: the rule can never match here"
                            ))
                    }
                }
            }
        }
        return out
    }

    /// The closest known key to a misspelt one, if it is a likely typo.
    public static func suggestion(for word: String, among known: [String]) -> String? {
        NetshapePolicy.suggestion(for: word, among: known)
    }

    /// Validates a document (from any syntax) into a `Policy`; the one validation entry point, used
    /// by `parse` for TOML files and by the CNI plugin for its JSON config. Throws `PolicyError`
    /// with every problem, positioned by `locator`.
    public static func validate(_ document: PolicyTable, file: String, locator: any PolicyLocating) throws -> Policy {
        var v = Validator(file: file, locator: locator)
        let policy = v.policy(document)
        if !v.diagnostics.isEmpty {
            throw PolicyError(diagnostics: v.diagnostics.sorted { $0.position < $1.position })
        }
        return policy
    }
}

/// The position of a NUL byte or an unescaped `\u0000` / `\U00000000` escape. TOMLKit hands strings
/// through C, which cuts them at a NUL without a word, so they are refused before parsing.
func nulPosition(_ text: String) -> SourcePosition? {
    let u = Array(text.utf8)
    var line = 1
    var col = 1
    var i = 0
    var backslashes = 0
    while i < u.count {
        let c = u[i]
        if c == 0 { return SourcePosition(line: line, column: col) }
        if c == 0x5C {
            backslashes += 1
        } else {
            if backslashes % 2 == 1 {
                let digits = c == 0x75 ? 4 : c == 0x55 ? 8 : 0
                if digits > 0, i + digits < u.count, u[(i + 1)...(i + digits)].allSatisfy({ $0 == 0x30 }) {
                    return SourcePosition(line: line, column: col - 1)
                }
            }
            backslashes = 0
        }
        if c == 0x0A {
            line += 1
            col = 1
        } else if c & 0xC0 != 0x80 {
            col += 1
        }
        i += 1
    }
    return nil
}

/// The position of a control character (TOML allows none but tab and newlines), or of a non-ASCII
/// character outside strings and comments, which TOML 1.0 never allows there. Refused before TOMLKit sees it: toml++ asserts (aborts the process) on some of
/// them in key position, found by the fuzz test.
/// How deep `[` and `{` may nest outside strings and comments. A policy needs 3 (a table header
/// `[[…]]` and an array of values); toml++ aborts on some deeply nested inputs (the fuzz test found
/// `x = [[[[…` with a stray `}`), so the depth is bounded before it sees them.
let maxNesting = 16

/// The first bracket toml++ would abort on instead of reporting: a `[` or `{` that opens level
/// `maxNesting + 1`, or a `}` where an array expects a value or its `]` (`[}`, `[1, }`).
func bracketProblem(_ text: String) -> (SourcePosition, String)? {
    var line = 1
    var col = 1
    var open: [UInt8] = []
    var expectValue = false
    var quote: UInt8? = nil
    var triple = false
    var comment = false
    let u = Array(text.utf8)
    var i = 0
    while i < u.count {
        let c = u[i]
        var step = 1
        if comment {
            if c == 0x0A { comment = false }
        } else if let q = quote {
            if triple {
                if i + 2 < u.count && u[i] == q && u[i + 1] == q && u[i + 2] == q {
                    quote = nil
                    step = 3
                }
            } else if c == 0x5C && q == 0x22 {
                step = 2  // an escape in a basic string
            } else if c == q || c == 0x0A {
                quote = nil
            }
        } else if c == 0x22 || c == 0x27 {
            triple = i + 2 < u.count && u[i + 1] == c && u[i + 2] == c
            quote = c
            if triple { step = 3 }
        } else if c == 0x23 {
            comment = true
        } else if c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D {
            // blanks keep whatever is expected
        } else {
            if expectValue && c == 0x7D {
                return (
                    SourcePosition(line: line, column: col),
                    "TOML syntax: '}' where the array expects a value or its closing ']'"
                )
            }
            expectValue = false
            if c == 0x5B || c == 0x7B {
                open.append(c)
                if open.count > maxNesting {
                    return (
                        SourcePosition(line: line, column: col),
                        "arrays and inline tables are nested more than \(maxNesting) deep here; no policy key needs that"
                    )
                }
                expectValue = c == 0x5B
            } else if c == 0x5D || c == 0x7D {
                if !open.isEmpty { open.removeLast() }
            } else if c == 0x2C && open.last == 0x5B {
                expectValue = true
            }
        }
        advance(u, &i, by: step, line: &line, column: &col)
    }
    return nil
}

/// Moves the byte index of the pre-screens `step` bytes on, keeping the 1-based line and column
/// (columns count characters: UTF-8 continuation bytes do not advance them).
func advance(_ u: [UInt8], _ i: inout Int, by step: Int, line: inout Int, column: inout Int) {
    for k in i..<min(i + step, u.count) {
        if u[k] == 0x0A {
            line += 1
            column = 1
        } else if u[k] & 0xC0 != 0x80 {
            column += 1
        }
    }
    i += step
}

/// What the character at `pos` (found by `strayNonASCII`) is, in a person's words.
func strayMessage(_ text: String, at pos: SourcePosition) -> String {
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
    let line = pos.line - 1 < lines.count ? Array(lines[pos.line - 1].utf8) : []
    let i = pos.column - 1
    guard i >= 0 && i < line.count else { return "TOML syntax: a key is missing at the end of the line" }
    let c = line[i]
    if c < 0x20 || c == 0x7F { return "TOML syntax: a control character (only tab and newlines are allowed)" }
    if c >= 0x80 { return "TOML syntax: a non-ASCII character outside a string or comment" }
    let before = line[..<i].last { $0 != 0x20 && $0 != 0x09 }
    if c == 0x7D && before == 0x2C {
        return "a comma before '}': TOML allows no trailing comma in an inline table"
    }
    return "TOML syntax: a key must start with a letter, a digit, '_', '-' or a quote"
}

func strayNonASCII(_ text: String) -> SourcePosition? {
    let u = Array(text.utf8)
    var line = 1
    var col = 1
    var i = 0
    var delimiter: [UInt8]? = nil  // the open string's delimiter
    var comment = false
    // In a key (a table header or before `=`): after `[`, `[[`, `.`, `{` or `,` a key must start
    // with a bare-key character or a quote; toml++ asserts instead of reporting otherwise.
    var lineStart = true
    var inKey = false
    var expectKey = false
    var braces = 0
    func bare(_ c: UInt8) -> Bool {
        (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39) || c == 0x5F || c == 0x2D
    }
    func starts(_ d: [UInt8], _ at: Int) -> Bool { at + d.count <= u.count && Array(u[at..<(at + d.count)]) == d }
    while i < u.count {
        let c = u[i]
        var step = 1
        if (c < 0x20 && c != 0x09 && c != 0x0A && c != 0x0D) || c == 0x7F {
            return SourcePosition(line: line, column: col)  // TOML allows no control character anywhere
        }
        if delimiter == nil && !comment && c != 0x20 && c != 0x09 && c != 0x0A && c != 0x0D && (c != 0x23 || expectKey)
        {
            if lineStart && braces == 0 {
                inKey = true
                expectKey = c != 0x5B
            }
            lineStart = false
            if expectKey {
                if !(bare(c) || c == 0x22 || c == 0x27 || c == 0x5B) { return SourcePosition(line: line, column: col) }
                expectKey = c == 0x5B
            } else if inKey && (c == 0x2E || c == 0x5B && braces == 0) {
                expectKey = true
            } else if inKey && (c == 0x3D || c == 0x5D) {
                inKey = false
            } else if c == 0x7B || (c == 0x2C && braces > 0) {
                if c == 0x7B { braces += 1 }
                inKey = true
                expectKey = true
            } else if c == 0x7D && braces > 0 {
                braces -= 1
            }
        }
        if c == 0x0A || c == 0x0D {
            if expectKey && delimiter == nil && !comment { return SourcePosition(line: line, column: col) }
        }
        if c == 0x0A {
            if braces == 0 { lineStart = true }
            inKey = false
            expectKey = false
            comment = false
            if let d = delimiter, d.count == 1 { delimiter = nil }  // an unterminated one-line string
        } else if comment {
        } else if let d = delimiter {
            if c == 0x5C && d.first == 0x22 {
                step = 2
            } else if starts(d, i) {
                step = d.count
                delimiter = nil
            }
        } else if c == 0x23 {
            comment = true
        } else if c == 0x22 || c == 0x27 {
            let triple = [c, c, c]
            delimiter = starts(triple, i) ? triple : [c]
            step = delimiter!.count
        } else if c >= 0x80 {
            return SourcePosition(line: line, column: col)
        }
        advance(u, &i, by: step, line: &line, column: &col)
    }
    return nil
}

/// Names become cgroup directories and netns names: `[a-z0-9][a-z0-9_.-]{0,31}`, so `..`, `/`
/// and anything else that could walk out of the net_cls tree never reach the filesystem.
public func isValidName(_ s: String) -> Bool {
    let u = Array(s.utf8)
    guard (1...32).contains(u.count) else { return false }
    func alnum(_ c: UInt8) -> Bool { (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39) }
    guard alnum(u[0]) else { return false }
    return u.dropFirst().allSatisfy { alnum($0) || $0 == 0x5F || $0 == 0x2E || $0 == 0x2D }
}

/// A Linux interface name: 1–15 bytes, no `/`, `:`, blanks, and not `.` or `..` (`dev_valid_name`).
public func isValidInterfaceName(_ s: String) -> Bool {
    let u = Array(s.utf8)
    guard (1...15).contains(u.count), s != ".", s != ".." else { return false }
    return !u.contains { $0 == 0x2F || $0 == 0x3A || $0 <= 0x20 || $0 >= 0x7F }
}

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

    // MARK: - Namespaces

    mutating func namespace(_ t: PolicyTable, _ path: [String]) -> NamespacePolicy? {
        checkKeys(t, path, Self.namespaceKeys, what: "[[namespace]]")
        let name = string(t, path, "name")
        if name == nil && t["name"] == nil && !wasSuggested(path, "name") { error(path, "[[namespace]] needs a name") }
        if let n = name, !isValidName(n) {
            error(
                path + ["name"],
                "namespace name \"\(n)\" is not allowed: use 1-32 of a-z 0-9 _ . - starting with a letter or digit (it becomes a cgroup directory)"
            )
        }
        let label = "namespace \"\(name ?? "?")\""
        var target = NetnsTarget.named(name ?? "")
        if let n = string(t, path, "netns") {
            if let tg = netnsTarget(n) {
                target = tg
            } else {
                error(
                    path + ["netns"],
                    "\(label): netns must be \"host\", an `ip netns` name, an absolute path to a namespace file, \"pid:N\", \"docker:NAME\" or \"podman:NAME\" (a container name or id); \"\(n)\" is none of these"
                )
            }
        }
        var selector: ContainerSelector?
        if let c = string(t, path, "containers") {
            selector = containerSelector(c, path + ["containers"], label: label)
            if t["netns"] != nil {
                error(
                    path + ["containers"],
                    "\(label): containers and netns exclude each other (each container is its own netns)")
            }
            if let n = name, n.count > containerEntryNameLimit {
                error(
                    path + ["name"],
                    "\(label): a containers entry's name has at most \(containerEntryNameLimit) characters, because each container's instance is named NAME-SHORTID (12 digits)"
                )
            }
            // Never resolvable (container names have no '='), so an unexpanded template can only ever be "not running".
            if let sel = selector { target = sel.runtime.target(sel.description) }
        }
        var device: String?
        if let d = string(t, path, "device") {
            if isValidInterfaceName(d) {
                device = d
            } else {
                error(
                    path + ["device"],
                    "\(label): \"\(d)\" is not a valid interface name (1-15 characters, no '/', ':' or blanks)")
            }
        }
        var egress: Rate?
        if t["egress"] == nil {
            if !wasSuggested(path, "egress") { error(path, "\(label) needs an egress rate (egress = \"100mbit\")") }
        } else {
            egress = rate(t, path, "egress", of: nil, label: label)
        }
        let ingress = t["ingress"] == nil ? nil : rate(t, path, "ingress", of: nil, label: label)
        let defaultClass = string(t, path, "default")
        let leafChoice = leaf(t, path)
        var provision: Provision?
        if let p = t["provision"] {
            if let pt = p.table {
                provision = self.provision(pt, path + ["provision"], nsName: name ?? "", label: label)
            } else {
                error(path + ["provision"], "\(label): provision must be a table ([namespace.provision])")
            }
        }

        var provisionable = true
        if case .named = target {} else { provisionable = false }
        if provision != nil && !provisionable {
            error(
                path + ["netns"],
                "\(label): provision creates an `ip netns` namespace, so netns must be such a name (not host, a path or pid:N)"
            )
        }
        var classes: [ClassPolicy] = []
        // Names as written, including those of classes rejected for another reason, so that one
        // mistake in a class does not also report `default` as naming no class.
        var writtenNames: [String] = []
        if let c = t["class"] {
            if let arr = c.array, arr.allSatisfy({ $0.table != nil }) {
                for (i, item) in arr.enumerated() {
                    if let n = item.table?["name"]?.string { writtenNames.append(n) }
                    if let cls = self.class(
                        item.table ?? PolicyTable(), path + ["class", String(i)], egress: egress, nsLabel: label)
                    {
                        classes.append(cls)
                    }
                }
            } else {
                error(path + ["class"], "\(label): class must be an array of tables ([[namespace.class]])")
            }
        }
        var seen = Set<String>()
        for (i, c) in classes.enumerated() where !seen.insert(c.name).inserted {
            error(path + ["class", String(i), "name"], "\(label): duplicate class name \"\(c.name)\"")
        }
        if classes.count > Planner.maxClassesPerNamespace {
            error(
                path,
                "\(label) has \(classes.count) classes; one device offers \(Planner.maxClassesPerNamespace) classids")
        }
        if let d = defaultClass {
            if !writtenNames.contains(d) {
                var msg = "\(label): default = \"\(d)\" names no class of this namespace"
                if let s = suggestion(for: d, among: writtenNames) { msg += "; did you mean \"\(s)\"?" }
                error(path + ["default"], msg)
            }
        } else if let ruled = classes.first(where: { !$0.match.isEmpty }) {
            error(
                path,
                "\(label): class \"\(ruled.name)\" has match rules, so the namespace needs default = \"<class>\" for the traffic no rule matches"
            )
        }
        if let e = egress {
            // Saturating: each rate is at most HTBLimits.maxRate, but the count of classes is the user's.
            let sum = classes.reduce(UInt64(0)) {
                let (s, o) = $0.addingReportingOverflow($1.rate.bytesPerSecond)
                return o ? UInt64.max : s
            }
            if sum > e.bytesPerSecond {
                error(
                    path + ["egress"],
                    "\(label): the classes' rates add up to \(Rate(bytesPerSecond: sum)), more than egress \(e): HTB could not guarantee them"
                )
            }
        }
        guard let n = name, let e = egress else { return nil }
        return NamespacePolicy(
            name: n, netns: target, device: device, egress: e, ingress: ingress,
            defaultClass: defaultClass, leaf: leafChoice, provision: provision, classes: classes,
            containers: selector)
    }

    /// `docker:label=KEY=VALUE,label=KEY`: a runtime and one or more labels, all required.
    mutating func containerSelector(_ s: String, _ path: [String], label: String) -> ContainerSelector? {
        let usage =
            "\(label): containers must be \"docker:label=KEY=VALUE\" or \"podman:label=KEY\" (several labels comma-separated, all required)"
        guard let colon = s.firstIndex(of: ":"), let runtime = ContainerRuntimeKind(rawValue: String(s[..<colon]))
        else {
            error(path, "\(usage); \"\(s)\" names no runtime")
            return nil
        }
        var labels: [String: String?] = [:]
        for term in s[s.index(after: colon)...].split(separator: ",", omittingEmptySubsequences: false) {
            guard term.hasPrefix("label="), term.count > 6 else {
                error(path, "\(usage); \"\(term)\" is not label=KEY or label=KEY=VALUE")
                return nil
            }
            let kv = term.dropFirst(6)
            let key = kv.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let k = key.first, !k.isEmpty, !k.contains(where: { $0 == " " || $0 == "," }) else {
                error(path, "\(usage); \"\(term)\" has an empty or blank label key")
                return nil
            }
            labels[String(k)] = key.count > 1 ? String(key[1]) : nil
        }
        return ContainerSelector(runtime: runtime, labels: labels)
    }

    func netnsTarget(_ s: String) -> NetnsTarget? {
        if s == "host" { return .host }
        if s.hasPrefix("pid:") {
            guard let p = Int32(s.dropFirst(4)), p > 0 else { return nil }
            return .pid(p)
        }
        // A NUL would silently cut the path or name where the kernel reads it.
        if s.utf8.contains(0) { return nil }
        if s.hasPrefix("/") { return s.split(separator: "/").contains("..") ? nil : .path(s) }
        for runtime in ContainerRuntimeKind.allCases where s.hasPrefix(runtime.rawValue + ":") {
            // Docker's and Podman's name rule ([a-zA-Z0-9][a-zA-Z0-9_.-]*), which a hex id also meets.
            let ref = s.dropFirst(runtime.rawValue.count + 1)
            guard let first = ref.first, first.isASCII, first.isLetter || first.isNumber,
                ref.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_.-".contains($0)) })
            else { return nil }
            return runtime.target(String(ref))
        }
        // `ip netns` names are files in /run/netns: no '/', not '.' or '..' (iproute2 netns_name_valid).
        guard !s.isEmpty, !s.contains("/"), s != ".", s != "..", s.utf8.count <= 255 else { return nil }
        return .named(s)
    }

    mutating func provision(_ t: PolicyTable, _ path: [String], nsName: String, label: String) -> Provision? {
        checkKeys(t, path, Self.provisionKeys, what: "[namespace.provision]")
        let address = string(t, path, "address")
        if let a = address, !isCIDR(a) {
            error(
                path + ["address"],
                "\(label): address \"\(a)\" is not an IPv4 or IPv6 address with a prefix length (198.18.10.2/24)")
        }
        let hostAddress = string(t, path, "host_address")
        if let a = hostAddress, !isCIDR(a) {
            error(path + ["host_address"], "\(label): host_address \"\(a)\" is not an address with a prefix length")
        }
        let gateway = string(t, path, "gateway")
        if let g = gateway, !isIP(g) { error(path + ["gateway"], "\(label): gateway \"\(g)\" is not an IP address") }
        let bridge = string(t, path, "bridge")
        if let b = bridge, !isValidInterfaceName(b) {
            error(path + ["bridge"], "\(label): bridge \"\(b)\" is not a valid interface name")
        }
        if bridge != nil && hostAddress != nil {
            error(
                path + ["bridge"],
                "\(label): give either host_address or bridge, not both (the address belongs on the bridge)")
        }
        var hostDevice = "ns-\(nsName)"
        if let h = string(t, path, "host_device") {
            if isValidInterfaceName(h) {
                hostDevice = h
            } else {
                error(path + ["host_device"], "\(label): host_device \"\(h)\" is not a valid interface name")
            }
        } else if !isValidInterfaceName(hostDevice) {
            error(
                path,
                "\(label): the default host_device \"\(hostDevice)\" is longer than 15 characters: set host_device")
        }
        return Provision(
            address: address, hostDevice: hostDevice, hostAddress: hostAddress, bridge: bridge, gateway: gateway)
    }

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

    // MARK: - Typed values

    mutating func string(_ t: PolicyTable, _ path: [String], _ key: String) -> String? {
        guard let v = t[key] else { return nil }
        if let s = v.string { return s }
        error(path + [key], "\(key) must be a string, found \(v.typeName)")
        return nil
    }

    mutating func strings(_ t: PolicyTable, _ path: [String], _ key: String, label: String) -> [String] {
        guard let v = t[key] else { return [] }
        if let s = v.string { return [s] }
        if let a = v.array {
            var out: [String] = []
            for item in a {
                if let s = item.string, !s.isEmpty {
                    out.append(s)
                } else {
                    error(path + [key], "\(label): match.\(key) takes non-empty strings, found \(item.typeName)")
                }
            }
            return out
        }
        error(path + [key], "\(label): match.\(key) must be a string or an array of strings, found \(v.typeName)")
        return []
    }

    mutating func principals(_ t: PolicyTable, _ path: [String], _ key: String, label: String) -> [Principal] {
        guard let v = t[key] else { return [] }
        let items = v.array ?? [v]
        var out: [Principal] = []
        for item in items {
            if let i = item.int, i >= 0, i <= Int(UInt32.max) {
                out.append(.id(UInt32(i)))
            } else if let s = item.string, !s.isEmpty {
                out.append(UInt32(s).map(Principal.id) ?? .name(s))
            } else {
                error(path + [key], "\(label): match.\(key) takes names or numeric ids, found \(item.typeName)")
            }
        }
        return out
    }

    /// A rate or `N%` of `of` (the namespace egress); nil after reporting when invalid.
    mutating func rate(_ t: PolicyTable, _ path: [String], _ key: String, of base: Rate?, label: String) -> Rate? {
        guard let v = t[key] else { return nil }
        let text: String
        if let s = v.string {
            text = s
        } else if let i = v.int, i >= 0 {
            text = String(i)
        } else {
            error(path + [key], "\(label): \(key) must be a rate such as \"100mbit\", found \(v.typeName)")
            return nil
        }
        if text.hasSuffix("%") {
            guard let base else {
                error(path + [key], "\(label): \(key) cannot be a percentage: it is the base percentages refer to")
                return nil
            }
            guard let pct = Double(text.dropLast().trimmingCharacters()), pct > 0, pct <= 100 else {
                error(path + [key], "\(label): \(key) \"\(text)\" is not a percentage between 0 and 100")
                return nil
            }
            // pct is in (0, 100], so the product stays below the base: no overflow.
            let r = Rate(bytesPerSecond: UInt64(Double(base.bytesPerSecond) * pct / 100))
            if r.bytesPerSecond == 0 { error(path + [key], "\(label): \(key) \"\(text)\" of \(base) rounds to zero") }
            return r.bytesPerSecond == 0 ? nil : r
        }
        guard let r = Rate(parsing: text) else {
            error(
                path + [key],
                "\(label): \(key) \"\(text)\" is not a rate; use tc units such as 10mbit, 1.5gbit, 500kbit, 2mbps (bytes) or 30%"
            )
            return nil
        }
        guard r.bytesPerSecond > 0 else {
            error(path + [key], "\(label): \(key) \"\(text)\" is zero (rates below 8bit round to 0 bytes/s)")
            return nil
        }
        guard r <= HTBLimits.maxRate else {
            error(
                path + [key],
                "\(label): \(key) \"\(text)\" is above \(HTBLimits.maxRate), the fastest rate HTB can hold with a burst it can express (burst is a 32-bit count of 64 ns ticks)"
            )
            return nil
        }
        return r
    }

    /// A size (`burst`, `cburst`): at least one full-size frame, at most one second at `rate` (or 64 KiB,
    /// whichever is more). Larger bursts let a class run unshaped for seconds: the CNI bandwidth
    /// plugin's 4294967295-bit default let 4 Gbit/s through a 20 Mbit limit.
    mutating func size(_ t: PolicyTable, _ path: [String], _ key: String, rate: Rate?, label: String) -> Size? {
        guard let v = t[key] else { return nil }
        let text: String
        if let s = v.string {
            text = s
        } else if let i = v.int, i >= 0 {
            text = String(i)
        } else {
            error(path + [key], "\(label): \(key) must be a size such as \"64kb\", found \(v.typeName)")
            return nil
        }
        guard let s = Size(parsing: text) else {
            error(path + [key], "\(label): \(key) \"\(text)\" is not a size; use tc units such as 1500b, 64kb, 1mb")
            return nil
        }
        if s.bytes < 1514 {
            error(
                path + [key],
                "\(label): \(key) \(s) is smaller than one full-size Ethernet frame (1514 bytes): the class could not send a full packet at once"
            )
            return nil
        }
        if let r = rate {
            let bound = max(r.bytesPerSecond, 64 * 1024)
            if s.bytes > bound {
                error(
                    path + [key],
                    "\(label): \(key) \(s) is more than one second at \(r) (\(Size(bytes: bound))): such a burst leaves the class unshaped for seconds"
                )
                return nil
            }
        }
        if let r = rate, s.bytes > HTBLimits.maxBurst(at: r) {
            error(
                path + [key],
                "\(label): \(key) \(s) at \(r) is more than HTB can express (at most \(Size(bytes: HTBLimits.maxBurst(at: r))): the burst is a 32-bit count of 64 ns ticks)"
            )
            return nil
        }
        return s
    }
}

extension StringProtocol {
    func trimmingCharacters() -> String {
        String(self.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}

/// The closest of `candidates` to `word` when it is close enough to be a likely typo: at most one
/// edit per three characters (a swap of neighbours counts as one), or one is a prefix of the other.
func suggestion(for word: String, among candidates: [String]) -> String? {
    let w = word.lowercased()
    let scored = candidates.map { c -> (String, Int) in
        let prefix = w.count >= 3 && (c.hasPrefix(w) || w.hasPrefix(c)) && c.count >= 3
        return (c, prefix ? 1 : editDistance(w, c))
    }.min { $0.1 < $1.1 }
    guard let (best, d) = scored else { return nil }
    return d <= max(1, min(3, best.count / 3)) ? best : nil
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a)
    let b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var d = Array(repeating: Array(repeating: 0, count: b.count + 1), count: a.count + 1)
    for i in 0...a.count { d[i][0] = i }
    for j in 0...b.count { d[0][j] = j }
    for i in 1...a.count {
        for j in 1...b.count {
            let cost = a[i - 1] == b[j - 1] ? 0 : 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
            }
        }
    }
    return d[a.count][b.count]
}

func isIP(_ s: String) -> Bool { isIPv4(s) || isIPv6(s) }

func isIPv4(_ s: String) -> Bool {
    let parts = s.split(separator: ".", omittingEmptySubsequences: false)
    return parts.count == 4
        && parts.allSatisfy { p in
            !p.isEmpty && p.count <= 3 && p.allSatisfy(\.isNumber) && (Int(p) ?? 256) <= 255
        }
}

func isIPv6(_ s: String) -> Bool {
    guard s.contains(":"), s.split(separator: "::", omittingEmptySubsequences: false).count <= 2 else { return false }
    let groups = s.split(separator: ":", omittingEmptySubsequences: true)
    return groups.count <= 8 && groups.allSatisfy { g in g.count <= 4 && g.allSatisfy(\.isHexDigit) }
}

func isCIDR(_ s: String) -> Bool {
    let parts = s.split(separator: "/", omittingEmptySubsequences: false)
    guard parts.count == 2, let len = Int(parts[1]) else { return false }
    let addr = String(parts[0])
    if isIPv4(addr) { return (0...32).contains(len) }
    if isIPv6(addr) { return (0...128).contains(len) }
    return false
}
