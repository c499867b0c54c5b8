import NetshapeTestSupport

/// Random TOML 1.0 documents built from the grammar (every key, value and line form), each valid
/// and defining no key twice, and small edits of them at the places a recogniser gets wrong
/// (quotes, escapes, underscores, signs, `T`, `:`, line ends). Shared by the fuzz test, which needs
/// no oracle, and the differential test against Python's tomllib.
struct TOMLGenerator {
    var rng: SeededRandom
    var names = 0

    mutating func pick<T>(_ xs: [T]) -> T { xs[Int(rng.next() % UInt64(xs.count))] }
    mutating func chance(_ n: UInt64) -> Bool { rng.next() % n == 0 }
    mutating func int(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }

    /// A new name, so that no key or table is defined twice (that is toml++'s to refuse).
    mutating func name() -> String {
        names += 1
        return "k\(names)"
    }

    mutating func simpleKey() -> String {
        let n = name()
        switch int(4) {
        case 0: return "\"\(n) \\u00e9\\t.\""
        case 1: return "'\(n) \"x\"'"
        case 2: return "\(n)-_\(int(100))"
        default: return n
        }
    }

    mutating func key() -> String {
        var k = simpleKey()
        for _ in 0..<int(3) { k += pick([".", " . ", "\t.", ". "]) + simpleKey() }
        return k
    }

    mutating func digits(_ alphabet: [Character], first: [Character]? = nil) -> String {
        var s = String(pick(first ?? alphabet))
        for _ in 0..<int(6) { s += (chance(4) ? "_" : "") + String(pick(alphabet)) }
        return s
    }

    mutating func number() -> String {
        let dec = Array("0123456789")
        let sign = pick(["", "+", "-"])
        switch int(9) {
        case 0: return sign + (chance(3) ? "0" : digits(dec, first: Array("123456789")))
        case 1: return "0x" + digits(Array("0123456789abcdefABCDEF"))
        case 2: return "0o" + digits(Array("01234567"))
        case 3: return "0b" + digits(Array("01"))
        case 4: return sign + (chance(2) ? "0" : digits(dec, first: Array("123456789"))) + "." + digits(dec)
        case 5:
            // Exponents stay small: 1e400 is valid TOML, but no double (toml++ refuses it).
            return sign + digits(dec, first: Array("123456789")) + pick(["e", "E"]) + pick(["", "+", "-"])
                + String(int(30))
        case 6: return sign + "0." + digits(dec) + "e" + pick(["", "-"]) + "0_" + String(int(30))
        case 7: return sign + pick(["inf", "nan"])
        default: return pick(["true", "false"])
        }
    }

    /// `from` to n - 1, in two digits.
    mutating func two(_ n: Int, from: Int = 0) -> String {
        let v = from + int(n - from)
        return v < 10 ? "0\(v)" : "\(v)"
    }

    mutating func dateTime() -> String {
        let date = "\(1000 + int(9000))-\(two(13, from: 1))-\(two(29, from: 1))"
        var time = "\(two(24)):\(two(60)):\(two(60))"
        if chance(3) { time += "." + String(int(1_000_000)) }
        switch int(4) {
        case 0: return date
        case 1: return time
        case 2: return date + pick(["T", "t", " "]) + time
        default:
            let offset = pick(["Z", "z", "+", "-"])
            return date + pick(["T", "t", " "]) + time + offset
                + (offset == "+" || offset == "-" ? "\(two(24)):\(two(60))" : "")
        }
    }

    mutating func escapes() -> String {
        pick([
            "\\b", "\\t", "\\n", "\\f", "\\r", "\\\"", "\\\\", "\\u00E9", "\\uD7FF", "\\uE000", "\\U0001F600",
            "\\U0010FFFF",
        ])
    }

    mutating func string() -> String {
        let text = pick(["", "a b", "ʎǝʞ", "[x] = {y}", "#no comment", "tab\there", "'q'"])
        switch int(6) {
        case 0: return "\"" + text.replacingOccurrences(of: "\"", with: "\\\"") + escapes() + "\""
        case 1: return "'" + text.replacingOccurrences(of: "'", with: "") + "'"
        case 2:
            return "\"\"\"" + pick(["", "\n", "\r\n"]) + text + escapes()
                + pick(["\\\n   ", "\\  \r\n", "\n", "\"", "\"\""]) + "x"
                + text + pick(["", "\"", "\"\""]) + "\"\"\""
        case 3:
            // No quote in the text: 'q' before the closing quotes would close the string early.
            return "'''" + pick(["", "\n"]) + text.replacingOccurrences(of: "'", with: "")
                + pick(["\n", "'", "''", "\\"]) + "x" + pick(["", "'", "''"])
                + "'''"
        default: return "\"" + escapes() + "\""
        }
    }

    mutating func value(_ depth: Int) -> String {
        switch depth < 4 ? int(8) : int(5) {
        case 0, 1: return number()
        case 2: return dateTime()
        case 3, 4: return string()
        case 5, 6:
            var items: [String] = []
            for _ in 0..<int(4) { items.append(value(depth + 1)) }
            let sep = pick([", ", ",", ",\n  ", " ,# c\n", ",\r\n"])
            return "[" + pick(["", " ", "\n", "# c\n"]) + items.joined(separator: sep)
                + (items.isEmpty ? "" : pick(["", ",", sep])) + pick(["", " ", "\n"]) + "]"
        default:
            var pairs: [String] = []
            for _ in 0..<int(3) { pairs.append(key() + pick([" = ", "=", "\t= "]) + value(depth + 1)) }
            return "{" + pick(["", " "]) + pairs.joined(separator: pick([", ", ","])) + pick(["", " "]) + "}"
        }
    }

    mutating func document() -> String {
        var lines: [String] = []
        for _ in 0..<(1 + int(12)) {
            switch int(7) {
            case 0: lines.append(pick(["", "  ", "# comment ẞ", "\t# [x]"]))
            case 1:
                let open = pick(["[", "[ ", "[[", "[[ "])
                lines.append(open + key() + (open.hasPrefix("[[") ? " ]]" : "]") + pick(["", " # c"]))
            default:
                lines.append(
                    pick(["", " "]) + key() + pick([" = ", "=", " =\t"]) + value(0) + pick(["", " # c", "\t"]))
            }
        }
        return lines.joined(separator: pick(["\n", "\r\n"])) + pick(["", "\n"])
    }

    static let edits: [String] = [
        "\"", "'", "\"\"\"", "'''", "\\", "\\u", "\\U", "\\uD800", "_", ".", "e", "E", "+", "-", ":", "T", "Z", " ",
        "\t", "\r", "\n", "\r\n", "#", "[", "]", "[[", "]]", "{", "}", ",", "=", "0", "9", "x", "o", "b", "é", "\u{7F}",
        "\u{01}", "\u{FEFF}",
    ]

    mutating func edit(_ text: String) -> String {
        var u = Array(text.utf8)
        for _ in 0..<(1 + int(3)) {
            let at = int(u.count + 1)
            switch int(5) {
            case 0, 1: u.insert(contentsOf: Array(pick(Self.edits).utf8), at: at)
            case 2: if at < u.count { u.remove(at: at) }
            case 3: if at < u.count { u.insert(u[at], at: at) }
            default: u = Array(u[..<at])  // cut short
            }
        }
        return String(decoding: u, as: UTF8.self)
    }
}
