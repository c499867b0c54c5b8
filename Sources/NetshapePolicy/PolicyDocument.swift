internal import TOMLKit

/// A policy document before validation, independent of the syntax it was written in: the TOML
/// file of `netshape apply` and the JSON network config of the CNI plugin both become one of these,
/// and `PolicyParser.validate` is the single place that turns it into a `Policy`. No text is ever
/// generated from one syntax to be re-parsed in another.
public indirect enum PolicyValue: Sendable, Equatable, CustomDebugStringConvertible {
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case array([PolicyValue])
    case table(PolicyTable)
    /// A value with no policy meaning (a TOML date, a JSON null), kept as written for messages.
    case other(String)

    public var string: String? { if case .string(let s) = self { return s } else { return nil } }
    public var int: Int? { if case .int(let i) = self { return i } else { return nil } }
    public var array: [PolicyValue]? { if case .array(let a) = self { return a } else { return nil } }
    public var table: PolicyTable? { if case .table(let t) = self { return t } else { return nil } }

    public var debugDescription: String {
        switch self {
        case .string(let s): return s.debugDescription
        case .int(let i): return String(i)
        case .double(let d): return String(d)
        case .bool(let b): return String(b)
        case .array(let a): return "[" + a.map(\.debugDescription).joined(separator: ", ") + "]"
        case .table(let t):
            return "{" + t.entries.map { "\($0.key) = \($0.value.debugDescription)" }.joined(separator: ", ") + "}"
        case .other(let o): return o
        }
    }

    /// "a string", "an integer (5)", … for "must be X, found Y" messages.
    var typeName: String {
        switch self {
        case .string: return "a string"
        case .int: return "an integer (\(debugDescription))"
        case .double: return "a number (\(debugDescription))"
        case .bool: return "a boolean"
        case .array: return "an array"
        case .table: return "a table"
        case .other(let o): return o == "null" ? "null" : "a date or time"
        }
    }
}

/// A table (TOML table, JSON object) with its keys in document order.
public struct PolicyTable: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var key: String
        public var value: PolicyValue
        public init(key: String, value: PolicyValue) {
            self.key = key
            self.value = value
        }
    }
    public var entries: [Entry]
    public init(_ entries: [Entry] = []) { self.entries = entries }

    public var keys: [String] { entries.map(\.key) }
    public subscript(_ key: String) -> PolicyValue? {
        get { entries.first { $0.key == key }?.value }
        set {
            entries.removeAll { $0.key == key }
            if let v = newValue { entries.append(Entry(key: key, value: v)) }
        }
    }
}

/// Where each path of a document was written (`namespace.0.class.1.rate`), for FILE:LINE:COL.
public protocol PolicyLocating: Sendable {
    func position(of path: [String]) -> SourcePosition
}

extension PolicyTable {
    /// The TOML table as a document.
    init(toml: TOMLTable) {
        self.init(toml.map { Entry(key: $0.0, value: PolicyValue(toml: $0.1)) })
    }
}

extension PolicyValue {
    init(toml v: TOMLValueConvertible) {
        switch v.type {
        case .string: self = .string(v.string ?? "")
        case .int: self = .int(v.int ?? 0)
        case .double: self = .double(v.double ?? .nan)
        case .bool: self = .bool(v.bool ?? false)
        case .array: self = .array((v.array.map { Array($0) } ?? []).map { PolicyValue(toml: $0) })
        case .table: self = .table(PolicyTable(toml: v.table ?? TOMLTable()))
        default: self = .other(v.debugDescription)
        }
    }
}
