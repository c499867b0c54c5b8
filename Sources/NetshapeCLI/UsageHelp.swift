import NetshapeCore

/// Usage errors a person can act on: what they probably meant, and what there is to choose from.
/// ArgumentParser alone says "2 unexpected arguments" for `netshape aply p.toml`.
enum UsageHelp {
    /// The subcommands' names, as typed. Each command spells its `commandName` out: derived, it is
    /// `String(describing:)` of the type, whose runtime lookups cost every start about a millisecond.
    static var commandNames: [String] { Netshape.configuration.subcommands.map { $0._commandName } }

    /// A usage error for the command line before ArgumentParser sees it, or nil when it looks like
    /// a command. Bare `netshape` gets the help text (and exit 2, like every usage error).
    static func preflight(_ args: [String]) -> String? {
        guard let first = args.first else {
            return Netshape.helpMessage() + "\nnetshape: error: give a command, e.g. netshape apply POLICY\n"
        }
        if first.hasPrefix("-") || first == "help" || commandNames.contains(first) { return nil }
        let list = "commands: \(commandNames.joined(separator: ", ")) (netshape --help explains each)"
        if first.hasSuffix(".toml") || first.contains("/") {
            return
                "netshape: error: '\(first)' is not a command; to apply that policy: netshape apply \(first)\n\(list)\n"
        }
        var message = "netshape: error: unknown command '\(first)'"
        if let s = suggestion(for: first, among: commandNames) { message += "; did you mean '\(s)'?" }
        return message + "\n" + list + "\n"
    }

    /// The candidate `word` is most likely a typo of: a unique prefix match, else the closest one
    /// within two edits (one for short words).
    static func suggestion(for word: String, among candidates: [String]) -> String? {
        let w = word.lowercased()
        if let exact = candidates.first(where: { $0.lowercased() == w }) { return exact }
        let prefixed = candidates.filter { $0.hasPrefix(w) }
        if w.count >= 2 && prefixed.count == 1 { return prefixed[0] }
        let limit = w.count <= 4 ? 1 : 2
        let scored = candidates.map { ($0, editDistance(w, $0.lowercased())) }.filter { $0.1 <= limit }
        guard let best = scored.min(by: { $0.1 < $1.1 }) else { return nil }
        // Two candidates equally close: naming one would be a guess.
        return scored.filter { $0.1 == best.1 }.count == 1 ? best.0 : nil
    }

    /// Levenshtein distance, with a transposition counting as one edit ("aplpy" → "apply").
    static func editDistance(_ a: String, _ b: String) -> Int {
        let x = Array(a)
        let y = Array(b)
        if x.isEmpty || y.isEmpty { return max(x.count, y.count) }
        var d = [[Int]](repeating: [Int](repeating: 0, count: y.count + 1), count: x.count + 1)
        for i in 0...x.count { d[i][0] = i }
        for j in 0...y.count { d[0][j] = j }
        for i in 1...x.count {
            for j in 1...y.count {
                let cost = x[i - 1] == y[j - 1] ? 0 : 1
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
                if i > 1 && j > 1 && x[i - 1] == y[j - 2] && x[i - 2] == y[j - 1] {
                    d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
                }
            }
        }
        return d[x.count][y.count]
    }

    /// "no class" errors: the classes there are, and the likely one.
    static func unknownClass(_ spec: String, in policy: Policy, namespace: NamespacePolicy?) -> String {
        if let ns = namespace {
            let name = String(spec.split(separator: "/", maxSplits: 1).last ?? "")
            var m = "no class \"\(name)\" in namespace \(ns.name) of \(policy.source)"
            if ns.classes.isEmpty {
                return m
                    + "; namespace \(ns.name) has no classes (only its implicit default class, which nothing can join)"
            }
            if let s = suggestion(for: name, among: ns.classes.map(\.name)) {
                m += "; did you mean \"\(ns.name)/\(s)\"?"
            }
            return m + "\nits classes: \(ns.classes.map(\.name).joined(separator: ", "))"
        }
        let all = policy.namespaces.flatMap { ns in ns.classes.map { "\(ns.name)/\($0.name)" } }
        var m = "no class \"\(spec)\" in \(policy.source)"
        if all.isEmpty { return m + "; the policy defines no classes (only each namespace's implicit default class)" }
        let names = policy.namespaces.flatMap { $0.classes.map(\.name) }
        if let s = suggestion(for: spec, among: Array(Set(names)).sorted()) {
            let owners = policy.namespaces.filter { $0.class(s) != nil }.map(\.name)
            m += "; did you mean \"\(owners.count == 1 ? s : "\(owners[0])/\(s)")\"?"
        }
        let empty = policy.namespaces.filter(\.classes.isEmpty).map(\.name)
        return m + "\nits classes (NAMESPACE/CLASS): \(all.joined(separator: ", "))"
            + (empty.isEmpty ? "" : "; no classes in \(empty.joined(separator: ", "))")
    }

    static func unknownNamespace(_ name: String, in policy: Policy) -> String {
        var m = "no namespace \"\(name)\" in \(policy.source)"
        let names = policy.namespaces.map(\.name)
        if let s = suggestion(for: name, among: names) { m += "; did you mean \"\(s)\"?" }
        return m + "\nits namespaces: \(names.joined(separator: ", "))"
    }
}
