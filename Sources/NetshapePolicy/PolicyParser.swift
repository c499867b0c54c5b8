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
        // Only syntactically valid TOML reaches toml++, which aborts the process on some malformed text.
        if let (pos, message) = tomlSyntaxProblem(text) {
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
