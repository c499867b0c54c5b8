import Synchronization

/// A 1-based line and column in a policy file.
public struct SourcePosition: Sendable, Equatable, Comparable, Hashable {
    public var line: Int
    public var column: Int
    public init(line: Int, column: Int) {
        self.line = line
        self.column = column
    }
    public static func < (a: SourcePosition, b: SourcePosition) -> Bool {
        (a.line, a.column) < (b.line, b.column)
    }
}

/// Finds where each key of an already-parsed TOML document was written.
///
/// TOMLKit (toml++ underneath) keeps node positions internally but does not expose them, so this
/// re-reads the text: it tracks the current table header (`[a.b]`, `[[a.b]]`, with an index for each
/// array of tables) and records `key = …` lines and the keys of one-line inline tables. Paths use
/// array indices as components: `namespace.0.class.1.rate`. It only runs on text TOMLKit accepted,
/// so it can ignore malformed input; strings and multi-line arrays are skipped so that their
/// content is never mistaken for keys.
/// A `SourceLocator` built the first time a position is asked for: a valid policy needs none, and
/// re-reading the text costs about as much as the rest of the validation.
final class LazySourceLocator: PolicyLocating, Sendable {
    let text: String
    let built = Mutex<SourceLocator?>(nil)

    init(_ text: String) { self.text = text }

    func position(of path: [String]) -> SourcePosition {
        built.withLock { locator in
            if locator == nil { locator = SourceLocator(text) }
            return locator?.position(of: path) ?? SourcePosition(line: 1, column: 1)
        }
    }
}

struct SourceLocator: PolicyLocating {
    private(set) var positions: [String: SourcePosition] = [:]

    init(_ text: String) {
        var table: [String] = []
        var aotCounters: [String: Int] = [:]
        var depth = 0  // open brackets/braces of a value continuing over lines
        var inMultiline: String? = nil  // the delimiter of an open multi-line string
        var lineNo = 0
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNo += 1
            let line = Array(rawLine.unicodeScalars)
            var i = 0
            if let delim = inMultiline {
                guard let end = Self.find(delim, in: line, from: 0) else { continue }
                inMultiline = nil
                i = end + delim.unicodeScalars.count
                depth += Self.bracketBalance(line, from: i, multiline: &inMultiline)
                continue
            }
            while i < line.count, line[i] == " " || line[i] == "\t" { i += 1 }
            guard i < line.count, line[i] != "#" else { continue }
            if depth > 0 {
                depth += Self.bracketBalance(line, from: i, multiline: &inMultiline)
                continue
            }
            if line[i] == "[" {
                let isArray = i + 1 < line.count && line[i + 1] == "["
                let start = i + (isArray ? 2 : 1)
                guard let close = line[start...].firstIndex(of: "]") else { continue }
                let keys = Self.splitKey(String(String.UnicodeScalarView(line[start..<close])))
                var resolved: [String] = []
                for (n, k) in keys.enumerated() {
                    resolved.append(k)
                    let key = resolved.joined(separator: ".")
                    if n == keys.count - 1 && isArray {
                        let idx = aotCounters[key].map { $0 + 1 } ?? 0
                        aotCounters[key] = idx
                        // A new element forgets the counters of arrays nested in the previous one.
                        for other in aotCounters.keys where other.hasPrefix(key + ".") { aotCounters[other] = nil }
                        resolved.append(String(idx))
                    } else if let idx = aotCounters[key] {
                        resolved.append(String(idx))
                    }
                }
                table = resolved
                record(table, SourcePosition(line: lineNo, column: i + 1))
                continue
            }
            // key = value
            guard let eq = Self.findEquals(line, from: i) else { continue }
            let keyText = String(String.UnicodeScalarView(line[i..<eq]))
            let path = table + Self.splitKey(keyText)
            record(path, SourcePosition(line: lineNo, column: i + 1))
            var v = eq + 1
            while v < line.count, line[v] == " " || line[v] == "\t" { v += 1 }
            if v < line.count, line[v] == "{" { recordInline(path, line, from: v + 1, lineNo: lineNo) }
            depth += Self.bracketBalance(line, from: eq + 1, multiline: &inMultiline)
        }
    }

    /// The position of `path` (or of its nearest recorded ancestor).
    func position(of path: [String]) -> SourcePosition {
        var p = path
        while !p.isEmpty {
            if let pos = positions[p.joined(separator: ".")] { return pos }
            p.removeLast()
        }
        return SourcePosition(line: 1, column: 1)
    }

    private mutating func record(_ path: [String], _ pos: SourcePosition) {
        let key = path.joined(separator: ".")
        if positions[key] == nil { positions[key] = pos }
    }

    /// Records `k = …` pairs of a one-line inline table `{ k = v, k2 = v2 }`.
    private mutating func recordInline(_ path: [String], _ line: [Unicode.Scalar], from start: Int, lineNo: Int) {
        var i = start
        var nested = 0
        var expectKey = true
        while i < line.count {
            let c = line[i]
            if c == "\"" || c == "'" {
                i = Self.skipString(line, from: i)
                continue
            }
            if c == "[" || c == "{" { nested += 1 }
            if c == "]" || c == "}" {
                if nested == 0 { return }
                nested -= 1
            }
            if nested == 0 && c == "," { expectKey = true }
            if nested == 0 && expectKey && c != " " && c != "," && c != "\t" {
                if let eq = Self.findEquals(line, from: i) {
                    let key = String(String.UnicodeScalarView(line[i..<eq]))
                    record(path + Self.splitKey(key), SourcePosition(line: lineNo, column: i + 1))
                    i = eq + 1
                    expectKey = false
                    continue
                }
                return
            }
            i += 1
        }
    }

    /// Splits a dotted key, honouring quotes and trimming blanks: `a."b.c" . d` → [a, b.c, d].
    static func splitKey(_ text: String) -> [String] {
        var parts: [String] = []
        var current = ""
        var quote: Character? = nil
        for ch in text {
            if let q = quote {
                if ch == q { quote = nil } else { current.append(ch) }
            } else if ch == "\"" || ch == "'" {
                quote = ch
            } else if ch == "." {
                parts.append(current)
                current = ""
            } else if ch != " " && ch != "\t" {
                current.append(ch)
            }
        }
        parts.append(current)
        return parts
    }

    /// Index of the `=` that ends a key starting at `from`, or nil if the line is not a key line.
    static func findEquals(_ line: [Unicode.Scalar], from: Int) -> Int? {
        var i = from
        while i < line.count {
            let c = line[i]
            if c == "\"" || c == "'" {
                i = skipString(line, from: i)
                continue
            }
            if c == "=" { return i }
            if c == "#" || c == "[" || c == "{" || c == "," || c == "}" { return nil }
            i += 1
        }
        return nil
    }

    /// Index just past the string starting at `from` (a basic or literal one-line string).
    static func skipString(_ line: [Unicode.Scalar], from: Int) -> Int {
        let q = line[from]
        var i = from + 1
        while i < line.count {
            if q == "\"" && line[i] == "\\" {
                i += 2
                continue
            }
            if line[i] == q { return i + 1 }
            i += 1
        }
        return i
    }

    /// Net count of `[`/`{` over `]`/`}` outside strings and comments; notes an unclosed `"""`/`'''`.
    static func bracketBalance(_ line: [Unicode.Scalar], from: Int, multiline: inout String?) -> Int {
        var i = from
        var balance = 0
        while i < line.count {
            let c = line[i]
            if c == "#" { break }
            if c == "\"" || c == "'" {
                let triple = String(repeating: String(c), count: 3)
                if find(triple, in: line, from: i) == i {
                    if let end = find(triple, in: line, from: i + 3) {
                        i = end + 3
                        continue
                    }
                    multiline = triple
                    return balance
                }
                i = skipString(line, from: i)
                continue
            }
            if c == "[" || c == "{" { balance += 1 }
            if c == "]" || c == "}" { balance -= 1 }
            i += 1
        }
        return balance
    }

    static func find(_ needle: String, in line: [Unicode.Scalar], from: Int) -> Int? {
        let n = Array(needle.unicodeScalars)
        guard n.count <= line.count else { return nil }
        var i = from
        while i + n.count <= line.count {
            if Array(line[i..<(i + n.count)]) == n { return i }
            i += 1
        }
        return nil
    }
}
