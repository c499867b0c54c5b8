import NetshapeCore
import NetshapeFailure
import NetshapePolicy

/// JSON text → `JSONValue`, remembering where every value starts, so that an error in a network
/// config points at the line and column the user wrote. Strict RFC 8259, with a nesting bound.
struct JSONParser {
    struct Failure: Error, CustomStringConvertible {
        var position: SourcePosition
        var message: String
        var description: String { "stdin:\(position.line):\(position.column): \(message)" }
    }

    /// Deeper documents are refused (a recursive parser must not exhaust the stack).
    static let maxDepth = 64

    private let u: [UInt8]
    private var i = 0
    private var line = 1
    private var lineStart = 0
    /// Position of each value by path (`netshape.classes.0.rate`; "" is the root).
    private(set) var positions: [String: SourcePosition] = [:]

    init(_ bytes: [UInt8]) { u = bytes }

    static func parse(_ bytes: [UInt8]) throws(Failure) -> (JSONValue, [String: SourcePosition]) {
        var p = JSONParser(bytes)
        p.skipBlanks()
        let v = try p.value(path: [], depth: 0)
        p.skipBlanks()
        guard p.i == p.u.count else { throw p.failure("unexpected text after the JSON value") }
        return (v, p.positions)
    }

    private var here: SourcePosition { SourcePosition(line: line, column: i - lineStart + 1) }
    private func failure(_ m: String) -> Failure { Failure(position: here, message: m) }

    private mutating func skipBlanks() {
        while i < u.count {
            switch u[i] {
            case 0x20, 0x09, 0x0D: i += 1
            case 0x0A:
                i += 1
                line += 1
                lineStart = i
            default: return
            }
        }
    }

    private mutating func value(path: [String], depth: Int) throws(Failure) -> JSONValue {
        guard depth <= Self.maxDepth else { throw failure("nesting deeper than \(Self.maxDepth) levels") }
        positions[path.joined(separator: ".")] = here
        guard i < u.count else { throw failure("unexpected end of input") }
        switch u[i] {
        case 0x7B:  // {
            i += 1
            var object: [String: JSONValue] = [:]
            skipBlanks()
            if i < u.count, u[i] == 0x7D {
                i += 1
                return .object(object)
            }
            while true {
                skipBlanks()
                guard i < u.count, u[i] == 0x22 else { throw failure("expected a key in quotes") }
                let key = try string()
                skipBlanks()
                guard i < u.count, u[i] == 0x3A else { throw failure("expected ':' after key \"\(key)\"") }
                i += 1
                skipBlanks()
                guard object[key] == nil else { throw failure("duplicate key \"\(key)\"") }
                object[key] = try value(path: path + [key], depth: depth + 1)
                skipBlanks()
                guard i < u.count else { throw failure("unexpected end of input in an object") }
                if u[i] == 0x2C {
                    i += 1
                    continue
                }
                guard u[i] == 0x7D else { throw failure("expected ',' or '}'") }
                i += 1
                return .object(object)
            }
        case 0x5B:  // [
            i += 1
            var array: [JSONValue] = []
            skipBlanks()
            if i < u.count, u[i] == 0x5D {
                i += 1
                return .array(array)
            }
            while true {
                skipBlanks()
                array.append(try value(path: path + [String(array.count)], depth: depth + 1))
                skipBlanks()
                guard i < u.count else { throw failure("unexpected end of input in an array") }
                if u[i] == 0x2C {
                    i += 1
                    continue
                }
                guard u[i] == 0x5D else { throw failure("expected ',' or ']'") }
                i += 1
                return .array(array)
            }
        case 0x22: return .string(try string())
        case 0x74: return try literal("true", .bool(true))
        case 0x66: return try literal("false", .bool(false))
        case 0x6E: return try literal("null", .null)
        default: return .number(try number())
        }
    }

    private mutating func literal(_ word: String, _ v: JSONValue) throws(Failure) -> JSONValue {
        let w = Array(word.utf8)
        guard i + w.count <= u.count, Array(u[i..<(i + w.count)]) == w else { throw failure("invalid literal") }
        i += w.count
        return v
    }

    private mutating func number() throws(Failure) -> Double {
        let start = i
        if i < u.count, u[i] == 0x2D { i += 1 }
        func digits(_ p: inout JSONParser) -> Int {
            let s = p.i
            while p.i < p.u.count, (0x30...0x39).contains(p.u[p.i]) { p.i += 1 }
            return p.i - s
        }
        guard digits(&self) > 0 else { throw failure("expected a value") }
        if i < u.count, u[i] == 0x2E {
            i += 1
            guard digits(&self) > 0 else { throw failure("expected digits after '.'") }
        }
        if i < u.count, u[i] == 0x65 || u[i] == 0x45 {
            i += 1
            if i < u.count, u[i] == 0x2B || u[i] == 0x2D { i += 1 }
            guard digits(&self) > 0 else { throw failure("expected digits in the exponent") }
        }
        guard let d = Double(String(decoding: u[start..<i], as: UTF8.self)) else { throw failure("invalid number") }
        return d
    }

    private mutating func string() throws(Failure) -> String {
        i += 1
        var out: [UInt8] = []
        while true {
            guard i < u.count else { throw failure("unterminated string") }
            let c = u[i]
            if c == 0x22 {
                i += 1
                break
            }
            if c < 0x20 { throw failure("control character in a string") }
            if c != 0x5C {
                out.append(c)
                i += 1
                continue
            }
            i += 1
            guard i < u.count else { throw failure("unterminated escape") }
            let e = u[i]
            i += 1
            switch e {
            case 0x22, 0x5C, 0x2F: out.append(e)
            case 0x62: out.append(0x08)
            case 0x66: out.append(0x0C)
            case 0x6E: out.append(0x0A)
            case 0x72: out.append(0x0D)
            case 0x74: out.append(0x09)
            case 0x75:
                var scalar = try hex4()
                if (0xD800...0xDBFF).contains(scalar) {
                    guard i + 1 < u.count, u[i] == 0x5C, u[i + 1] == 0x75 else { throw failure("lone surrogate") }
                    i += 2
                    let low = try hex4()
                    guard (0xDC00...0xDFFF).contains(low) else { throw failure("invalid surrogate pair") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let s = Unicode.Scalar(scalar) else { throw failure("invalid \\u escape") }
                out += Array(String(Character(s)).utf8)
            default: throw failure("invalid escape")
            }
        }
        guard let s = String(validating: out, as: UTF8.self) else { throw failure("string is not valid UTF-8") }
        return s
    }

    private mutating func hex4() throws(Failure) -> UInt32 {
        guard i + 4 <= u.count, let v = UInt32(String(decoding: u[i..<(i + 4)], as: UTF8.self), radix: 16) else {
            throw failure("invalid \\u escape")
        }
        i += 4
        return v
    }
}

/// Points policy paths of a CNI-built document at the JSON the user wrote.
struct CNILocator: PolicyLocating {
    var positions: [String: SourcePosition]
    /// Policy path prefix → JSON path prefix (`namespace.0.class` → `netshape.classes`).
    var prefixes: [([String], [String])]

    func jsonPath(_ path: [String]) -> [String] {
        for (from, to) in prefixes.sorted(by: { $0.0.count > $1.0.count }) where path.starts(with: from) {
            return to + path.dropFirst(from.count)
        }
        return path
    }

    func position(of path: [String]) -> SourcePosition {
        var p = jsonPath(path)
        while true {
            if let pos = positions[p.joined(separator: ".")] { return pos }
            if p.isEmpty { return SourcePosition(line: 1, column: 1) }
            p.removeLast()
        }
    }

    /// `netshape.classes[1].rate`, as jq and the CNI docs write JSON paths.
    func display(_ path: [String]) -> String {
        var out = ""
        for c in jsonPath(path) {
            if Int(c) != nil { out += "[\(c)]" } else { out += out.isEmpty ? c : ".\(c)" }
        }
        return out.isEmpty ? "(the network config)" : out
    }
}

extension JSONValue {
    /// The JSON value as a policy document value (numbers that are integers stay integers).
    var policyValue: PolicyValue {
        switch self {
        case .null: return .other("null")
        case .bool(let b): return .bool(b)
        case .number(let n):
            if n.isFinite, n == n.rounded(), abs(n) < 9e15 { return .int(Int(n)) }
            return .double(n)
        case .string(let s): return .string(s)
        case .array(let a): return .array(a.map(\.policyValue))
        case .object(let o):
            return .table(
                PolicyTable(o.sorted { $0.key < $1.key }.map { .init(key: $0.key, value: $0.value.policyValue) }))
        }
    }

    var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number(let n): return "a number (\(n))"
        case .string(let s): return "a string (\(s.debugDescription))"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}

/// The network config → a one-namespace `Policy`, through `PolicyParser.validate`: every rule and
/// message of policy files, positioned in the JSON.
struct CNIConfig {
    static let netshapeKeys = ["classes", "default", "classifier"]

    let config: JSONValue
    let positions: [String: SourcePosition]

    init(_ bytes: [UInt8]) throws(CNIError) {
        do {
            (config, positions) = try JSONParser.parse(bytes)
        } catch {
            throw CNIError(code: 6, msg: "cannot decode the network configuration on stdin", details: error.description)
        }
        guard case .object = config else {
            throw CNIError(
                code: 6, msg: "the network configuration on stdin is not a JSON object", details: "at stdin:1:1")
        }
    }

    func at(_ path: [String]) -> String {
        let p = positions[path.joined(separator: ".")] ?? SourcePosition(line: 1, column: 1)
        return "stdin:\(p.line):\(p.column)"
    }

    func invalid(_ path: [String], _ message: String) -> CNIError {
        let loc = CNILocator(positions: positions, prefixes: [])
        return CNIError(code: 7, msg: "\(loc.display(path)): \(message)", details: "at \(at(path))")
    }

    /// A bandwidth-plugin figure (`egressRate`, …): `runtimeConfig.bandwidth` first, then top
    /// level. Like the reference plugin, only JSON numbers are accepted: a string such as "10mbit"
    /// is an error, not "unset".
    func figure(_ key: String, max: UInt64, unit: String) throws(CNIError) -> (value: UInt64, path: [String])? {
        for path in [["runtimeConfig", "bandwidth", key], [key]] {
            var v: JSONValue? = config
            for c in path { v = v?[c] }
            guard let v else { continue }
            guard case .number(let n) = v else {
                throw invalid(path, "must be a number of \(unit) (as for the bandwidth plugin), found \(v.typeName)")
            }
            guard n.isFinite, n >= 0, n == n.rounded() else {
                throw invalid(path, "must be a whole, non-negative number of \(unit), found \(n)")
            }
            guard n <= Double(max) else { throw invalid(path, "\(n) \(unit) is out of range: at most \(max)") }
            return (UInt64(n), path)
        }
        return nil
    }

    /// The validated one-namespace policy for this attachment.
    func policy(name: String, netns: String, ifname: String) throws -> Policy {
        let maxBits = HTBLimits.maxRate.bitsPerSecond
        var ns = PolicyTable()
        var prefixes: [([String], [String])] = [(["namespace", "0"], [])]
        ns["name"] = .string(name)
        ns["netns"] = .string(netns)
        ns["device"] = .string(ifname)
        let egress = try figure("egressRate", max: maxBits, unit: "bits per second")
        // Without an egress rate the namespace still gets its HTB (so classes work); the largest rate
        // HTB holds leaves it effectively unshaped.
        ns["egress"] = .int(Int(egress?.value ?? maxBits))
        if let e = egress { prefixes.append((["namespace", "0", "egress"], e.path)) }
        if let i = try figure("ingressRate", max: maxBits, unit: "bits per second") {
            ns["ingress"] = .int(Int(i.value))
            prefixes.append((["namespace", "0", "ingress"], i.path))
        }
        var settings: PolicyTable?
        let block = config["netshape"]
        if let block {
            guard case .object(let fields) = block else {
                throw invalid(
                    ["netshape"],
                    "must be an object ({\"classes\": [...], \"default\": \"...\"}), found \(block.typeName)")
            }
            for key in fields.keys.sorted() where !Self.netshapeKeys.contains(key) {
                var m = "unknown key \"\(key)\" (known: \(Self.netshapeKeys.joined(separator: ", ")))"
                if let s = PolicyParser.suggestion(for: key, among: Self.netshapeKeys) {
                    m += "; did you mean \"\(s)\"?"
                }
                throw invalid(["netshape", key], m)
            }
            if let c = fields["classifier"] {
                settings = PolicyTable([.init(key: "classifier", value: c.policyValue)])
                prefixes.append((["settings"], ["netshape"]))
            }
            if let d = fields["default"] {
                ns["default"] = d.policyValue
                prefixes.append((["namespace", "0", "default"], ["netshape", "default"]))
            }
            if let c = fields["classes"] {
                guard case .array = c else {
                    throw invalid(["netshape", "classes"], "must be an array of class objects, found \(c.typeName)")
                }
                ns["class"] = c.policyValue
                prefixes.append((["namespace", "0", "class"], ["netshape", "classes"]))
            }
        }
        if ns["class"] == nil, let rate = egress,
            let b = try figure("egressBurst", max: UInt64.max >> 11, unit: "bits"),
            b.value != UInt64(CNIPlugin.unsetBurst),
            b.value > 0
        {
            // A real burst (bits) for a pod without classes: one class carrying the whole egress.
            // Clamped to what netshape accepts (one full frame … one second at the rate) rather than
            // refused: a pod's owner cannot easily mend an annotation.
            let bytes = min(
                Swift.max(b.value / 8, 1514), Swift.max(rate.value / 8, 65_536),
                HTBLimits.maxBurst(at: Rate(bytesPerSecond: rate.value / 8)))
            ns["default"] = .string("pod")
            ns["class"] = .array([
                .table(
                    PolicyTable([
                        .init(key: "name", value: .string("pod")), .init(key: "rate", value: .int(Int(rate.value))),
                        .init(key: "burst", value: .string("\(bytes)b")),
                    ]))
            ])
            prefixes.append((["namespace", "0", "class"], b.path))
        }
        var doc = PolicyTable([.init(key: "version", value: .int(1))])
        if let settings { doc["settings"] = .table(settings) }
        doc["namespace"] = .array([.table(ns)])
        let locator = CNILocator(positions: positions, prefixes: prefixes)
        do {
            return try PolicyParser.validate(doc, file: "stdin", locator: locator)
        } catch let e as PolicyError {
            let lines = e.diagnostics.map {
                "stdin:\($0.position.line):\($0.position.column): \(locator.display($0.path)): \($0.message)"
            }
            throw CNIError(
                code: 7, msg: "invalid netshape configuration: \(lines[0])", details: lines.joined(separator: "\n"))
        }
    }
}
