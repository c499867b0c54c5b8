import NetshapeCore

/// Reads the ownership record without `JSONDecoder`: every command decodes it once, and the
/// generic Codable path spends about 2 ms on a 1000-class record (runtime type and conformance
/// lookups for each nested container), most of a one-change apply's own work besides the kernel's.
///
/// It accepts exactly the JSON that netshape's `JSONEncoder` writes and older versions wrote, and
/// gives up (`Unsupported`) on anything else: an unknown key (a field newer than this code), a
/// duplicate key, a number that is not a plain integer, invalid UTF-8. The caller then decodes the
/// same bytes with `JSONDecoder`, which either reads them or says what is wrong, so the fast path
/// can never accept a record the Codable one would refuse, nor read one differently.
enum RecordCodec {
    struct Unsupported: Error {}

    static func decode(_ bytes: [UInt8]) throws -> OwnershipRecord {
        var p = JSONScanner(bytes)
        let value = try p.document()
        let o = try value.object(["namespaces", "sockCreate"])
        guard case .object(let entries)? = o["namespaces"] else { throw Unsupported() }
        var namespaces: [String: OwnershipRecord.Namespace] = [:]
        namespaces.reserveCapacity(entries.count)
        for (name, v) in entries {
            guard namespaces[name] == nil else { throw Unsupported() }
            namespaces[name] = try namespace(v)
        }
        return OwnershipRecord(namespaces: namespaces, sockCreate: try o["sockCreate"]?.bool())
    }

    static func namespace(_ v: JSONValue) throws -> OwnershipRecord.Namespace {
        let o = try v.object([
            "policy", "target", "device", "egress", "ingress", "provisioned", "cgroup2Classifier", "cgroups",
            "sockCookie",
        ])
        guard let policy = try o["policy"]?.string() else { throw Unsupported() }
        var n = OwnershipRecord.Namespace(
            policy: policy, target: try o["target"].map(target), device: try o["device"]?.string(),
            egress: try o["egress"].map(tree), ingress: try o["ingress"].map(ingress),
            provisioned: try o["provisioned"].map(provisioned), cgroups: try o["cgroups"]?.strings())
        n.cgroup2Classifier = try o["cgroup2Classifier"]?.string()
        n.sockCookie = try o["sockCookie"]?.integer(UInt64.self)
        return n
    }

    static func tree(_ v: JSONValue) throws -> OwnershipRecord.Tree {
        let o = try v.object(["netnsID", "device", "ifindex", "handle", "classes"])
        guard let netnsID = try o["netnsID"]?.string(), let device = try o["device"]?.string(),
            let ifindex = try o["ifindex"]?.integer(Int32.self), let handle = try o["handle"]?.handle()
        else { throw Unsupported() }
        var classes: [TCHandle]?
        if let list = o["classes"] {
            guard case .array(let items) = list else { throw Unsupported() }
            classes = try items.map { try $0.handle() }
        }
        return OwnershipRecord.Tree(
            netnsID: netnsID, device: device, ifindex: ifindex, handle: handle, classes: classes)
    }

    static func ingress(_ v: JSONValue) throws -> OwnershipRecord.Ingress {
        let o = try v.object(["tree", "ifb", "redirectFrom"])
        return OwnershipRecord.Ingress(
            tree: try o["tree"].map(tree), ifb: try o["ifb"]?.string(), redirectFrom: try o["redirectFrom"]?.string())
    }

    static func provisioned(_ v: JSONValue) throws -> OwnershipRecord.Provisioned {
        let o = try v.object(["netns", "hostDevice", "bridge"])
        return OwnershipRecord.Provisioned(
            netns: try o["netns"]?.string(), hostDevice: try o["hostDevice"]?.string(),
            bridge: try o["bridge"]?.string())
    }

    /// The synthesized Codable form of an enum with associated values: `{"named":{"_0":"x"}}`,
    /// `{"host":{}}`.
    static func target(_ v: JSONValue) throws -> NetnsTarget {
        guard case .object(let pairs) = v, pairs.count == 1, let (kind, payload) = pairs.first else {
            throw Unsupported()
        }
        if kind == "host" {
            _ = try payload.object([])
            return .host
        }
        let o = try payload.object(["_0"])
        guard let value = o["_0"] else { throw Unsupported() }
        switch kind {
        case "named": return .named(try value.string())
        case "path": return .path(try value.string())
        case "pid": return .pid(try value.integer(Int32.self))
        case "docker": return .docker(try value.string())
        case "podman": return .podman(try value.string())
        default: throw Unsupported()
        }
    }
}

/// A parsed JSON value. Objects keep their members in order (they are small; a dictionary per
/// object would cost more than the linear lookups).
enum JSONValue {
    case object([(String, JSONValue)])
    case array([JSONValue])
    case string(String)
    /// An integer literal: sign and magnitude (a UInt64 cookie does not fit an Int64).
    case integer(negative: Bool, magnitude: UInt64)
    case bool(Bool)
    case null

    /// The members of an object whose keys are all among `known`, null members left out (the
    /// Codable decoding of an optional reads null as absent). Anything else is `Unsupported`.
    func object(_ known: [String]) throws -> Members {
        guard case .object(let pairs) = self else { throw RecordCodec.Unsupported() }
        var out: [(String, JSONValue)] = []
        out.reserveCapacity(pairs.count)
        for (n, (k, v)) in pairs.enumerated() {
            guard known.contains(k), !pairs[..<n].contains(where: { $0.0 == k }) else {
                throw RecordCodec.Unsupported()
            }
            if case .null = v { continue }
            out.append((k, v))
        }
        return Members(pairs: out)
    }

    struct Members {
        let pairs: [(String, JSONValue)]
        subscript(_ key: String) -> JSONValue? { pairs.first { $0.0 == key }?.1 }
    }

    func string() throws -> String {
        guard case .string(let s) = self else { throw RecordCodec.Unsupported() }
        return s
    }

    func strings() throws -> [String] {
        guard case .array(let items) = self else { throw RecordCodec.Unsupported() }
        return try items.map { try $0.string() }
    }

    func bool() throws -> Bool {
        guard case .bool(let b) = self else { throw RecordCodec.Unsupported() }
        return b
    }

    func integer<T: FixedWidthInteger>(_: T.Type) throws -> T {
        guard case .integer(let negative, let magnitude) = self else { throw RecordCodec.Unsupported() }
        if negative {
            // -0 and anything below T.min are left to JSONDecoder.
            guard T.isSigned, magnitude > 0, magnitude <= UInt64(T.max) + 1 else { throw RecordCodec.Unsupported() }
            return magnitude == UInt64(T.max) + 1 ? T.min : 0 - T(magnitude)
        }
        guard let v = T(exactly: magnitude) else { throw RecordCodec.Unsupported() }
        return v
    }

    /// A tc handle as `TCHandle` encodes it (`"217a:1"`).
    func handle() throws -> TCHandle {
        guard let h = TCHandle(parsing: try string()) else { throw RecordCodec.Unsupported() }
        return h
    }
}

/// A strict JSON reader over bytes (RFC 8259), with integers only as numbers.
struct JSONScanner {
    let bytes: [UInt8]
    var i = 0
    /// Nesting limit: the record is four levels deep; a hostile file cannot exhaust the stack.
    static let maxDepth = 64

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    /// The one value the text holds, with nothing but whitespace around it.
    mutating func document() throws -> JSONValue {
        let v = try value(depth: 0)
        skipBlanks()
        guard i == bytes.count else { throw RecordCodec.Unsupported() }
        return v
    }

    mutating func skipBlanks() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
    }

    mutating func value(depth: Int) throws -> JSONValue {
        guard depth < Self.maxDepth else { throw RecordCodec.Unsupported() }
        skipBlanks()
        guard i < bytes.count else { throw RecordCodec.Unsupported() }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            i += 1
            var pairs: [(String, JSONValue)] = []
            skipBlanks()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") {
                i += 1
                return .object(pairs)
            }
            while true {
                skipBlanks()
                let key = try string()
                skipBlanks()
                try expect(UInt8(ascii: ":"))
                pairs.append((key, try value(depth: depth + 1)))
                skipBlanks()
                if try next(UInt8(ascii: ","), or: UInt8(ascii: "}")) { return .object(pairs) }
            }
        case UInt8(ascii: "["):
            i += 1
            var items: [JSONValue] = []
            skipBlanks()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") {
                i += 1
                return .array(items)
            }
            while true {
                items.append(try value(depth: depth + 1))
                skipBlanks()
                if try next(UInt8(ascii: ","), or: UInt8(ascii: "]")) { return .array(items) }
            }
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): return try literal("true", .bool(true))
        case UInt8(ascii: "f"): return try literal("false", .bool(false))
        case UInt8(ascii: "n"): return try literal("null", .null)
        default: return try integer()
        }
    }

    mutating func expect(_ b: UInt8) throws {
        guard i < bytes.count, bytes[i] == b else { throw RecordCodec.Unsupported() }
        i += 1
    }

    /// Consumes `more` (false: another member follows) or `end` (true).
    mutating func next(_ more: UInt8, or end: UInt8) throws -> Bool {
        guard i < bytes.count else { throw RecordCodec.Unsupported() }
        let b = bytes[i]
        i += 1
        if b == end { return true }
        guard b == more else { throw RecordCodec.Unsupported() }
        return false
    }

    mutating func literal(_ word: StaticString, _ v: JSONValue) throws -> JSONValue {
        let n = word.utf8CodeUnitCount
        guard i + n <= bytes.count else { throw RecordCodec.Unsupported() }
        for k in 0..<n where bytes[i + k] != word.utf8Start[k] { throw RecordCodec.Unsupported() }
        i += n
        return v
    }

    /// `-?(0|[1-9][0-9]*)`; a fraction or exponent is unsupported (the record has none).
    mutating func integer() throws -> JSONValue {
        var negative = false
        if i < bytes.count, bytes[i] == UInt8(ascii: "-") {
            negative = true
            i += 1
        }
        let start = i
        var m: UInt64 = 0
        while i < bytes.count, (0x30...0x39).contains(bytes[i]) {
            guard let next = m.appendingDecimalDigit(bytes[i]) else { throw RecordCodec.Unsupported() }
            m = next
            i += 1
        }
        let count = i - start
        guard count > 0, !(count > 1 && bytes[start] == 0x30) else { throw RecordCodec.Unsupported() }
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") || bytes[i] | 0x20 == UInt8(ascii: "e") {
            throw RecordCodec.Unsupported()
        }
        return .integer(negative: negative, magnitude: m)
    }

    /// A string literal, escapes resolved; unescaped control characters and invalid UTF-8 are
    /// unsupported.
    mutating func string() throws -> String {
        try expect(UInt8(ascii: "\""))
        var out: [UInt8] = []
        var start = i
        while true {
            guard i < bytes.count else { throw RecordCodec.Unsupported() }
            let b = bytes[i]
            if b == UInt8(ascii: "\"") { break }
            if b < 0x20 { throw RecordCodec.Unsupported() }
            if b != UInt8(ascii: "\\") {
                i += 1
                continue
            }
            out += bytes[start..<i]
            i += 1
            guard i < bytes.count else { throw RecordCodec.Unsupported() }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800..<0xDC00).contains(scalar) {
                    // A high surrogate must be followed by an escaped low one.
                    guard i + 1 < bytes.count, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                        throw RecordCodec.Unsupported()
                    }
                    i += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else { throw RecordCodec.Unsupported() }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let u = Unicode.Scalar(scalar) else { throw RecordCodec.Unsupported() }
                out += Array(String(Character(u)).utf8)
            default: throw RecordCodec.Unsupported()
            }
            start = i
        }
        let text: String?
        if out.isEmpty {
            text = String(validating: bytes[start..<i], as: UTF8.self)
        } else {
            out += bytes[start..<i]
            text = String(validating: out, as: UTF8.self)
        }
        i += 1
        guard let text else { throw RecordCodec.Unsupported() }
        return text
    }

    mutating func hex4() throws -> UInt32 {
        guard i + 4 <= bytes.count else { throw RecordCodec.Unsupported() }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let b = bytes[i]
            let d: UInt8
            switch b {
            case 0x30...0x39: d = b - 0x30
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = b - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = b - UInt8(ascii: "A") + 10
            default: throw RecordCodec.Unsupported()
            }
            v = v << 4 | UInt32(d)
            i += 1
        }
        return v
    }
}
