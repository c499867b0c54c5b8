// A strict TOML 1.0 syntax recogniser that runs before toml++ (under TOMLKit) sees the text.
//
// toml++ checks much of its input with assertions instead of errors, and SwiftPM builds it without
// NDEBUG, so on some malformed input (`[[[a]]`, `x = 1979-05-27T\07:32:00Z`, found by the fuzz
// test) it aborts the process: `netshape check` dies instead of reporting, and a daemon dies on
// SIGHUP when its policy file is edited to such text. Screening the 93 assertions one by one does
// not end, so only text that is syntactically valid TOML 1.0 (https://toml.io/en/v1.0.0, its ABNF)
// reaches toml++. Nothing is built: bytes in, the first error with its position out. Semantics
// (duplicate keys, a table defined twice, integers out of range) stay toml++'s job, which reports
// them. One pass over the UTF-8 bytes; recursion only for arrays and inline tables, bounded by
// `maxNesting`.

/// How deep arrays and inline tables may nest. A policy needs 2 (an array of values in an inline
/// table); toml++ aborts on some deeply nested inputs (the fuzz test found `x = [[[[…` with a
/// stray `}`), so the depth is bounded before it sees them.
let maxNesting = 16

/// How many dotted parts a key or table header may have. A policy needs 2 (`[[namespace.class]]`,
/// `match.comm`); toml++ and TOMLKit recurse once per part, and a key of 100 000 parts overflowed
/// the stack (SIGSEGV), so the depth a key adds is bounded too.
let maxKeyParts = 16

/// The first TOML 1.0 syntax error in `text`, at its position, in words a policy author can act
/// on; nil when the text is syntactically valid TOML. With `refusingNUL`, also refuses a `\u0000`
/// escape, which is valid TOML: TOMLKit hands strings through C, which would cut them there
/// without a word. (A NUL character is never valid TOML.)
func tomlSyntaxProblem(_ text: String, refusingNUL: Bool = true) -> (SourcePosition, String)? {
    var text = text
    return text.withUTF8 { u in
        var r = TOMLSyntax(u, refusingNUL: refusingNUL)
        do throws(TOMLSyntax.Failure) {
            try r.document()
            return nil
        } catch {
            return (r.position(of: error.offset), error.message)
        }
    }
}

struct TOMLSyntax {
    struct Failure: Error {
        var offset: Int
        var message: String
    }

    /// Where a value stands, for the words of a missing-value error.
    enum Context { case keyval, array }

    let u: UnsafeBufferPointer<UInt8>
    let refusingNUL: Bool
    var i = 0

    init(_ u: UnsafeBufferPointer<UInt8>, refusingNUL: Bool) {
        self.u = u
        self.refusingNUL = refusingNUL
    }

    // Bytes by name.
    static let tab: UInt8 = 0x09
    static let lf: UInt8 = 0x0A
    static let cr: UInt8 = 0x0D
    static let space: UInt8 = 0x20
    static let dq: UInt8 = 0x22
    static let hash: UInt8 = 0x23
    static let sq: UInt8 = 0x27
    static let plus: UInt8 = 0x2B
    static let comma: UInt8 = 0x2C
    static let minus: UInt8 = 0x2D
    static let dot: UInt8 = 0x2E
    static let colon: UInt8 = 0x3A
    static let equals: UInt8 = 0x3D
    static let lbracket: UInt8 = 0x5B
    static let backslash: UInt8 = 0x5C
    static let rbracket: UInt8 = 0x5D
    static let underscore: UInt8 = 0x5F
    static let lbrace: UInt8 = 0x7B
    static let rbrace: UInt8 = 0x7D

    /// The byte at `k`, 0 past the end (callers that care tell the two apart by `k < u.count`).
    @inline(__always) func at(_ k: Int) -> UInt8 { k < u.count ? u[k] : 0 }

    static func isDigit(_ c: UInt8) -> Bool { c &- 0x30 < 10 }
    static func isHex(_ c: UInt8) -> Bool { isDigit(c) || (c | 0x20) &- 0x61 < 6 }
    static func isOctal(_ c: UInt8) -> Bool { c &- 0x30 < 8 }
    static func isBinary(_ c: UInt8) -> Bool { c &- 0x30 < 2 }
    static func isAlpha(_ c: UInt8) -> Bool { (c | 0x20) &- 0x61 < 26 }
    static func isBare(_ c: UInt8) -> Bool { isAlpha(c) || isDigit(c) || c == underscore || c == minus }
    /// What a bare value (number, date, time, boolean, inf, nan) can be made of.
    static func isWord(_ c: UInt8) -> Bool { isBare(c) || c == plus || c == dot || c == colon }
    /// A character TOML allows in strings and comments (tab, printable ASCII, any non-ASCII).
    @inline(__always) static func isText(_ c: UInt8) -> Bool { (c >= 0x20 && c != 0x7F) || c == tab }

    func fail(_ k: Int, _ message: String) -> Failure { Failure(offset: k, message: message) }

    // MARK: - Document, lines, comments

    mutating func document() throws(Failure) {
        if u.count >= 3 && u[0] == 0xEF && u[1] == 0xBB && u[2] == 0xBF { i = 3 }  // a UTF-8 byte order mark
        while true {
            skipBlanks()
            guard i < u.count else { return }
            let c = u[i]
            if c == Self.lf || c == Self.cr {
                try newline()
                continue
            }
            var what = ""
            if c == Self.hash {
                try comment()
            } else if c == Self.lbracket {
                try header()
                what = "the table header: nothing but a # comment may follow it on its line"
            } else if Self.isBare(c) || c == Self.dq || c == Self.sq {
                try keyval()
                what = "the value: one key = value per line, and text with spaces belongs inside the quotes"
            } else {
                throw stray(i, "unexpected \(found(i)): a line holds key = value, a [table] header or a # comment")
            }
            skipBlanks()
            if i < u.count && u[i] == Self.hash { try comment() }
            if i < u.count && u[i] != Self.lf && u[i] != Self.cr {
                throw stray(i, "unexpected \(found(i)) after \(what)")
            }
        }
    }

    mutating func skipBlanks() {
        while i < u.count && (u[i] == Self.space || u[i] == Self.tab) { i += 1 }
    }

    /// At LF or CR: a line break (LF or CRLF).
    mutating func newline() throws(Failure) {
        if u[i] == Self.cr {
            guard at(i + 1) == Self.lf else { throw bareCR(i) }
            i += 2
        } else {
            i += 1
        }
    }

    /// At `#`: the comment up to (not including) its line break.
    mutating func comment() throws(Failure) {
        i += 1
        while i < u.count {
            let c = u[i]
            if Self.isText(c) {
                i += 1
            } else if c == Self.lf || (c == Self.cr && at(i + 1) == Self.lf) {
                return
            } else if c == Self.cr {
                throw bareCR(i)
            } else if c == 0 {
                throw nul(i)
            } else {
                throw fail(i, "TOML syntax: a control character (U+\(hex4(c))) in a comment: only tab is allowed there")
            }
        }
    }

    /// Blanks, line breaks and comments, as between an array's values.
    mutating func skipArrayBlanks() throws(Failure) {
        while i < u.count {
            let c = u[i]
            if c == Self.space || c == Self.tab || c == Self.lf {
                i += 1
            } else if c == Self.cr {
                try newline()
            } else if c == Self.hash {
                try comment()
            } else {
                return
            }
        }
    }

    // MARK: - Keys, key/value pairs, headers

    /// `key = value`, at the top level (depth 0) or inside an inline table at `depth`.
    mutating func keyval(depth: Int = 0) throws(Failure) {
        try key()
        skipBlanks()
        guard at(i) == Self.equals, i < u.count else {
            throw stray(
                i,
                "expected '=' after the key, found \(found(i)): write key = value (a key with spaces in it must be quoted)"
            )
        }
        i += 1
        skipBlanks()
        try value(depth: depth, .keyval)
    }

    /// A simple or dotted key (`a`, `"a b"`, `a . 'b'`); leaves `i` after its last part.
    mutating func key() throws(Failure) {
        try simpleKey()
        var parts = 1
        while true {
            var j = i
            while at(j) == Self.space || at(j) == Self.tab { j += 1 }
            guard j < u.count && u[j] == Self.dot else { return }
            i = j + 1
            skipBlanks()
            parts += 1
            if parts > maxKeyParts {
                throw fail(i, "a key or table name of more than \(maxKeyParts) dotted parts; no policy key needs that")
            }
            try simpleKey()
        }
    }

    mutating func simpleKey() throws(Failure) {
        guard i < u.count else { throw fail(i, "TOML syntax: a key is missing at the end of the file") }
        let c = u[i]
        if Self.isBare(c) {
            while i < u.count && Self.isBare(u[i]) { i += 1 }
        } else if c == Self.dq || c == Self.sq {
            if at(i + 1) == c && at(i + 2) == c {
                throw fail(i, "TOML syntax: a key cannot be a multi-line string: quote it on one line (\"a b\" = …)")
            }
            try oneLineString(c)
        } else if c == Self.lf || c == Self.cr {
            throw fail(i, "TOML syntax: a key is missing at the end of the line")
        } else {
            throw stray(
                i, "TOML syntax: a key must start with a letter, a digit, '_', '-' or a quote, found \(found(i))")
        }
    }

    /// At `[`: a table header `[a.b]` or an array-of-tables header `[[a.b]]`.
    mutating func header() throws(Failure) {
        let double = at(i + 1) == Self.lbracket
        let closing = double ? "]]" : "]"
        i += double ? 2 : 1
        skipBlanks()
        if double && at(i) == Self.lbracket && i < u.count {
            // toml++ asserts in parse_key on this one (fuzz seed 379350135).
            throw fail(
                i,
                "TOML syntax: a table-array header `[[NAME]]` whose name begins with '['; write `[[namespace]]` or `[[namespace.class]]`"
            )
        }
        if at(i) == Self.rbracket && i < u.count {
            throw fail(i, "TOML syntax: a table header needs a name between its brackets ([settings], [[namespace]])")
        }
        try key()
        skipBlanks()
        if at(i) == Self.rbracket && i < u.count {
            if !double {
                i += 1
                return
            }
            if at(i + 1) == Self.rbracket && i + 1 < u.count {
                i += 2
                return
            }
            i += 1
        }
        let c = at(i)
        if i >= u.count || c == Self.lf || c == Self.cr || c == Self.hash {
            throw fail(i, "unclosed table header: it needs its closing \(closing)")
        }
        throw stray(
            i,
            "TOML syntax: expected the closing \(closing) of the table header, found \(found(i)) (a name with spaces in it must be quoted)"
        )
    }

    // MARK: - Values

    mutating func value(depth: Int, _ context: Context) throws(Failure) {
        guard i < u.count else { throw missingValue(context) }
        let c = u[i]
        switch c {
        case Self.dq, Self.sq:
            if at(i + 1) == c && at(i + 2) == c { try multilineString(c) } else { try oneLineString(c) }
        case Self.lbracket:
            try array(depth: depth + 1)
        case Self.lbrace:
            try inlineTable(depth: depth + 1)
        case Self.lf, Self.cr, Self.hash, Self.comma, Self.rbracket, Self.rbrace:
            throw c == Self.cr && at(i + 1) != Self.lf ? bareCR(i) : missingValue(context)
        default:
            guard Self.isWord(c) else { throw stray(i, notAValue) }
            try bareValue()
        }
    }

    func missingValue(_ context: Context) -> Failure {
        switch context {
        case .keyval:
            return fail(i, "missing value after '=': found \(found(i))")
        case .array:
            if at(i) == Self.rbrace && i < u.count {
                return fail(i, "TOML syntax: '}' where the array expects a value or its closing ']'")
            }
            return fail(i, "TOML syntax: expected a value or the closing ] of the array, found \(found(i))")
        }
    }

    var notAValue: String {
        "this value is not valid TOML: put text in quotes (egress = \"100mbit\"); only numbers, true and false are written bare"
    }

    /// At `[`: `[ v, v, ]` over any number of lines, with comments between the values.
    mutating func array(depth: Int) throws(Failure) {
        if depth > maxNesting { throw tooDeep(i) }
        i += 1
        while true {
            try skipArrayBlanks()
            guard i < u.count else { throw fail(i, "unclosed array: the file ends before its closing ]") }
            if u[i] == Self.rbracket {
                i += 1
                return
            }
            try value(depth: depth, .array)
            try skipArrayBlanks()
            guard i < u.count else { throw fail(i, "unclosed array: the file ends before its closing ]") }
            if u[i] == Self.comma {
                i += 1
            } else if u[i] == Self.rbracket {
                i += 1
                return
            } else {
                throw stray(i, "expected ',' between the array's values, or its closing ], found \(found(i))")
            }
        }
    }

    /// At `{`: `{ k = v, k = v }` on one line (its values may be arrays and strings over lines).
    mutating func inlineTable(depth: Int) throws(Failure) {
        if depth > maxNesting { throw tooDeep(i) }
        i += 1
        skipBlanks()
        if at(i) == Self.rbrace && i < u.count {
            i += 1
            return
        }
        while true {
            let c = at(i)
            if i >= u.count || c == Self.lf || c == Self.cr {
                throw fail(i, "expected a key or the closing } of the inline table, found \(found(i)) \(oneLine)")
            }
            try keyval(depth: depth)
            skipBlanks()
            if at(i) == Self.comma && i < u.count {
                i += 1
                skipBlanks()
                if at(i) == Self.rbrace && i < u.count {
                    throw fail(i, "a comma before '}': TOML allows no trailing comma in an inline table { … }")
                }
            } else if at(i) == Self.rbrace && i < u.count {
                i += 1
                return
            } else {
                throw stray(i, "expected ',' or the closing } of the inline table, found \(found(i)) \(oneLine)")
            }
        }
    }

    var oneLine: String { "(an inline table { … } must fit on one line)" }

    func tooDeep(_ k: Int) -> Failure {
        fail(k, "arrays and inline tables are nested more than \(maxNesting) deep here; no policy key needs that")
    }

    // MARK: - Strings

    /// At `"` or `'`: a one-line string, basic (`"`, with escapes) or literal (`'`, none).
    mutating func oneLineString(_ q: UInt8) throws(Failure) {
        let open = i
        let basic = q == Self.dq
        i += 1
        while true {
            guard i < u.count else { throw unterminated(open, q) }
            let c = u[i]
            if c == q {
                i += 1
                return
            } else if basic && c == Self.backslash {
                try escape()
            } else if Self.isText(c) {
                i += 1
            } else if c == Self.lf || (c == Self.cr && at(i + 1) == Self.lf) {
                throw unterminated(open, q)
            } else {
                throw controlInString(i, literal: !basic)
            }
        }
    }

    /// At `"""` or `'''`: a multi-line string. Up to two quotes may stand right before the closing
    /// three (`""""""` is not a string with one quote in it, but `"""a"""""` is `a""`).
    mutating func multilineString(_ q: UInt8) throws(Failure) {
        let open = i
        let basic = q == Self.dq
        i += 3
        while true {
            guard i < u.count else {
                let d = basic ? "\"\"\"" : "'''"
                throw fail(open, "unterminated multi-line string: the file ends before its closing \(d)")
            }
            let c = u[i]
            if c == q {
                var run = 1
                while at(i + run) == q && i + run < u.count { run += 1 }
                if run >= 3 {
                    if run > 5 {
                        throw fail(
                            i,
                            "TOML syntax: too many quotes: at most two may stand right before the closing \(basic ? "\"\"\"" : "'''") of a multi-line string\(basic ? " (write \\\" for more)" : "")"
                        )
                    }
                    i += run
                    return
                }
                i += run
            } else if c == Self.backslash && basic {
                let n = at(i + 1)
                if n == Self.space || n == Self.tab || n == Self.lf || n == Self.cr {
                    // A line-ending backslash: only blanks between it and the line break.
                    var j = i + 1
                    while at(j) == Self.space || at(j) == Self.tab { j += 1 }
                    if at(j) == Self.lf && j < u.count {
                        i = j + 1
                    } else if at(j) == Self.cr && at(j + 1) == Self.lf {
                        i = j + 2
                    } else {
                        throw fail(
                            i,
                            "TOML syntax: a backslash followed by a blank inside \"\"\"…\"\"\": a line-ending backslash must be the last thing on its line; write \\\\ for a backslash"
                        )
                    }
                } else {
                    try escape()
                }
            } else if Self.isText(c) || c == Self.lf {
                i += 1
            } else if c == Self.cr && at(i + 1) == Self.lf {
                i += 2
            } else if c == Self.cr {
                throw bareCR(i)
            } else {
                throw controlInString(i, literal: !basic)
            }
        }
    }

    /// At `\` in a basic string: one escape.
    mutating func escape() throws(Failure) {
        guard i + 1 < u.count else {
            i += 1  // the string's loop reports the end of the file
            return
        }
        let c = u[i + 1]
        switch c {
        case 0x62, 0x74, 0x6E, 0x66, 0x72, Self.dq, Self.backslash:  // \b \t \n \f \r \" \\
            i += 2
        case 0x75, 0x55:  // \uXXXX, \UXXXXXXXX
            let digits = c == 0x75 ? 4 : 8
            var v: UInt32 = 0
            for k in 0..<digits {
                let h = at(i + 2 + k)
                guard Self.isHex(h), i + 2 + k < u.count else {
                    let form = c == 0x75 ? "\\u00E9" : "\\U0001F600"
                    throw fail(
                        i,
                        "TOML syntax: \\\(c == 0x75 ? "u" : "U") takes exactly \(digits) hexadecimal digits (\(form)), found \(found(i + 2 + k))"
                    )
                }
                v = v << 4 | UInt32(Self.isDigit(h) ? h - 0x30 : (h | 0x20) - 0x61 + 10)
            }
            if v == 0 && refusingNUL { throw nul(i) }
            if (0xD800...0xDFFF).contains(v) || v > 0x10FFFF {
                let written = String(decoding: UnsafeBufferPointer(rebasing: u[i..<(i + 2 + digits)]), as: UTF8.self)
                throw fail(
                    i,
                    "TOML syntax: \(written) names no character: a \\u or \\U escape must be a Unicode scalar value (not D800-DFFF, at most 10FFFF)"
                )
            }
            i += 2 + digits
        case Self.lf, Self.cr:
            throw fail(
                i,
                "TOML syntax: a backslash at the end of the line: only a multi-line \"\"\"…\"\"\" string continues on the next line; write \\\\ for a backslash"
            )
        default:
            throw fail(
                i,
                "TOML syntax: unknown escape sequence '\\\(scalarText(i + 1))' in a \"…\" string: write \\\\ for a backslash, or use single quotes, in which a backslash is plain text ('C:\\dir')"
            )
        }
    }

    func unterminated(_ open: Int, _ q: UInt8) -> Failure {
        let quote = q == Self.dq ? "\"" : "'"
        let triple = String(repeating: quote, count: 3)
        return fail(
            open,
            "unterminated string: add the closing \(quote) on the same line (a string that spans lines is written \(triple)…\(triple))"
        )
    }

    func controlInString(_ k: Int, literal: Bool) -> Failure {
        let c = u[k]
        if c == 0 { return nul(k) }
        if literal {
            return fail(
                k,
                "a control character (U+\(hex4(c))) inside a '…' string, which has no escapes: use a \"…\" string and write it \\u\(hex4(c))"
            )
        }
        return fail(k, "a control character (U+\(hex4(c))) inside a string: write it as an escape (\\t, \\u\(hex4(c)))")
    }

    // MARK: - Bare values: booleans, numbers, dates and times

    /// At a character of `isWord`: the whole bare value, up to a blank, `,`, `]`, `}`, `#` or the
    /// line break. A date, a space and a time are one value (`1979-05-27 07:32:00`).
    mutating func bareValue() throws(Failure) {
        let s = i
        var e = i
        while e < u.count && Self.isWord(u[e]) { e += 1 }
        if e - s == 10 && isDateShape(s) && at(e) == Self.space && Self.isDigit(at(e + 1)) && Self.isDigit(at(e + 2))
            && at(e + 3) == Self.colon
        {
            e += 1
            while e < u.count && Self.isWord(u[e]) { e += 1 }
        }
        try classify(s, e)
        i = e
    }

    func isDateShape(_ s: Int) -> Bool {
        Self.isDigit(at(s)) && Self.isDigit(at(s + 1)) && Self.isDigit(at(s + 2)) && Self.isDigit(at(s + 3))
            && at(s + 4) == Self.minus
    }

    func equals(_ s: Int, _ e: Int, _ word: StaticString) -> Bool {
        guard e - s == word.utf8CodeUnitCount else { return false }
        for k in 0..<(e - s) where u[s + k] != word.utf8Start[k] { return false }
        return true
    }

    func classify(_ s: Int, _ e: Int) throws(Failure) {
        if equals(s, e, "true") || equals(s, e, "false") { return }
        if u[s] | 0x20 == 0x74 || u[s] | 0x20 == 0x66 {  // t, f
            let lower = text(s, e).lowercased()
            if lower == "true" || lower == "false" {
                throw fail(s, "true and false are written in lower case, found '\(text(s, e))'")
            }
        }
        if e - s > 4 && isDateShape(s) { return try dateTime(s, e) }
        if s + 2 < e && Self.isDigit(u[s]) && Self.isDigit(u[s + 1]) && u[s + 2] == Self.colon {
            let p = try time(s, e, date: false)
            if p != e {
                throw fail(
                    p, "TOML syntax: unexpected \(found(p)) in the time (a time of day is HH:MM:SS, with no offset)")
            }
            return
        }
        try number(s, e)
    }

    func text(_ s: Int, _ e: Int) -> String { String(decoding: UnsafeBufferPointer(rebasing: u[s..<e]), as: UTF8.self) }

    /// An integer (decimal, 0x, 0o, 0b) or a float (fraction, exponent, inf, nan), each with an
    /// optional sign where TOML allows one and `_` only between two digits.
    func number(_ s: Int, _ e: Int) throws(Failure) {
        var p = s
        let signed = u[p] == Self.plus || u[p] == Self.minus
        if signed { p += 1 }
        if equals(p, e, "inf") || equals(p, e, "nan") { return }
        guard p < e, Self.isDigit(u[p]) else { throw fail(s, notAValue) }
        if u[p] == 0x30 && p + 1 < e {
            let x = u[p + 1]
            if x == 0x78 || x == 0x6F || x == 0x62 {  // 0x, 0o, 0b
                let radix: (UInt8) -> Bool
                switch x {
                case 0x78: radix = Self.isHex
                case 0x6F: radix = Self.isOctal
                default: radix = Self.isBinary
                }
                if signed { throw fail(s, "TOML syntax: a hexadecimal, octal or binary number takes no sign") }
                guard p + 2 < e, radix(u[p + 2]) else {
                    throw fail(
                        p + 2,
                        "TOML syntax: digits must follow 0\(Character(Unicode.Scalar(x))) (0x1F, 0o17, 0b101), found \(found(p + 2))"
                    )
                }
                if try digits(p + 2, e, radix) != e { throw fail(s, notAValue) }
                return
            }
            if x == 0x58 || x == 0x4F || x == 0x42 {  // 0X, 0O, 0B
                throw fail(
                    p + 1, "TOML syntax: a hexadecimal, octal or binary number starts 0x, 0o or 0b, in lower case")
            }
            if Self.isDigit(x) || x == Self.underscore {
                throw fail(p, "a number may not start with 0 (write 1, not 01)")
            }
        }
        p = try digits(p, e, Self.isDigit)
        if p < e && u[p] == Self.dot {
            p += 1
            guard p < e, Self.isDigit(u[p]) else {
                throw fail(p, "TOML syntax: a digit must follow the decimal point (write 1.0 or 1, not 1.)")
            }
            p = try digits(p, e, Self.isDigit)
        }
        if p < e && u[p] | 0x20 == 0x65 {  // e, E
            p += 1
            if p < e && (u[p] == Self.plus || u[p] == Self.minus) { p += 1 }
            guard p < e, Self.isDigit(u[p]) else {
                throw fail(p, "TOML syntax: the exponent needs digits (1e6, 2.5E-3), found \(found(p))")
            }
            p = try digits(p, e, Self.isDigit)
        }
        if p != e { throw fail(s, notAValue) }
    }

    /// From a digit: digits with single underscores between them; returns where they end.
    func digits(_ start: Int, _ e: Int, _ isDigit: (UInt8) -> Bool) throws(Failure) -> Int {
        var p = start
        while p < e {
            if isDigit(u[p]) {
                p += 1
            } else if u[p] == Self.underscore {
                guard p + 1 < e, isDigit(u[p + 1]) else {
                    throw fail(p, "TOML syntax: '_' in a number must stand between two digits (1_000_000)")
                }
                p += 2
            } else {
                break
            }
        }
        return p
    }

    /// Two digits at `k` (not past `e`) as a number, or `shape` with where it is broken.
    func twoDigits(_ k: Int, _ e: Int, _ shape: String) throws(Failure) -> Int {
        let bad = !(k < e && Self.isDigit(u[k])) ? k : !(k + 1 < e && Self.isDigit(u[k + 1])) ? k + 1 : -1
        if bad >= 0 { throw fail(bad, "TOML syntax: \(shape), found \(found(bad))") }
        return Int(u[k] - 0x30) * 10 + Int(u[k + 1] - 0x30)
    }

    /// A separator at `k` (not past `e`), or `shape` with what stands there instead.
    func expect(_ c: UInt8, _ k: Int, _ e: Int, _ shape: String) throws(Failure) {
        guard k < e && u[k] == c else { throw fail(k, "TOML syntax: \(shape), found \(found(k))") }
    }

    /// `YYYY-MM-DD`, then optionally `T` (or `t`, or a space) and a time, then optionally an offset
    /// (`Z`, `+HH:MM`, `-HH:MM`).
    func dateTime(_ s: Int, _ e: Int) throws(Failure) {
        let shape = "a date is written YYYY-MM-DD (1979-05-27)"
        let year =
            Int(u[s] - 0x30) * 1000 + Int(u[s + 1] - 0x30) * 100 + Int(u[s + 2] - 0x30) * 10 + Int(u[s + 3] - 0x30)
        let month = try twoDigits(s + 5, e, shape)
        try expect(Self.minus, s + 7, e, shape)
        let day = try twoDigits(s + 8, e, shape)
        guard (1...12).contains(month) else {
            throw fail(s + 5, "TOML syntax: month \(text(s + 5, s + 7)) does not exist (01 to 12)")
        }
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
        let days = month == 2 ? (leap ? 29 : 28) : [4, 6, 9, 11].contains(month) ? 30 : 31
        guard (1...days).contains(day) else {
            throw fail(
                s + 8,
                "TOML syntax: day \(text(s + 8, s + 10)) does not exist in \(text(s, s + 7)) (it has \(days) days)")
        }
        var p = s + 10
        if p == e { return }  // a local date
        guard u[p] == 0x54 || u[p] == 0x74 || u[p] == Self.space else {  // T, t
            throw fail(
                p, "TOML syntax: unexpected \(found(p)) after the date: a date and time are written 1979-05-27T07:32:00"
            )
        }
        p = try time(p + 1, e, date: true)
        if p == e { return }  // a local date-time
        if u[p] == 0x5A || u[p] == 0x7A {  // Z, z
            p += 1
        } else if u[p] == Self.plus || u[p] == Self.minus {
            let offset = "an offset is written Z, +HH:MM or -HH:MM (1979-05-27T07:32:00-07:00)"
            let h = try twoDigits(p + 1, e, offset)
            try expect(Self.colon, p + 3, e, offset)
            let m = try twoDigits(p + 4, e, offset)
            if h > 23 { throw fail(p + 1, "TOML syntax: an offset of \(h) hours does not exist (00 to 23)") }
            if m > 59 { throw fail(p + 4, "TOML syntax: an offset of \(m) minutes does not exist (00 to 59)") }
            p += 6
        } else {
            throw fail(
                p, "TOML syntax: unexpected \(found(p)) after the time: an offset is written Z, +HH:MM or -HH:MM")
        }
        if p != e { throw fail(p, "TOML syntax: unexpected \(found(p)) after the date-time's offset") }
    }

    /// `HH:MM:SS` with an optional fraction (`.999999`); returns where it ends. TOML 1.0 requires
    /// the seconds.
    func time(_ s: Int, _ e: Int, date: Bool) throws(Failure) -> Int {
        let shape =
            date
            ? "a date and time are written 1979-05-27T07:32:00 (seconds included)"
            : "a time is written HH:MM:SS (07:32:00, seconds included)"
        let hour = try twoDigits(s, e, shape)
        try expect(Self.colon, s + 2, e, shape)
        let minute = try twoDigits(s + 3, e, shape)
        try expect(Self.colon, s + 5, e, shape)
        let second = try twoDigits(s + 6, e, shape)
        if hour > 23 { throw fail(s, "TOML syntax: hour \(text(s, s + 2)) does not exist (00 to 23)") }
        if minute > 59 { throw fail(s + 3, "TOML syntax: minute \(text(s + 3, s + 5)) does not exist (00 to 59)") }
        // RFC 3339 allows a leap second; toml++ then refuses it in its own words.
        if second > 60 { throw fail(s + 6, "TOML syntax: second \(text(s + 6, s + 8)) does not exist (00 to 59)") }
        var p = s + 8
        if p < e && u[p] == Self.dot {
            p += 1
            guard p < e, Self.isDigit(u[p]) else {
                throw fail(p, "TOML syntax: digits must follow the '.' of the seconds (07:32:00.5), found \(found(p))")
            }
            while p < e && Self.isDigit(u[p]) { p += 1 }
        }
        return p
    }

    // MARK: - Words for errors

    /// What stands at `k`, in prose: `'x'`, the end of the line or file, a control character.
    func found(_ k: Int) -> String {
        guard k < u.count else { return "the end of the file" }
        let c = u[k]
        if c == Self.lf || (c == Self.cr && at(k + 1) == Self.lf) { return "the end of the line" }
        if c == Self.space { return "a space" }
        if c == Self.tab { return "a tab" }
        if c < 0x20 || c == 0x7F { return "a control character (U+\(hex4(c)))" }
        return "'\(scalarText(k))'"
    }

    /// The character starting at byte `k` (a whole UTF-8 sequence).
    func scalarText(_ k: Int) -> String {
        guard k < u.count else { return "" }
        var e = k + 1
        while e < u.count && u[e] & 0xC0 == 0x80 { e += 1 }
        return text(k, e)
    }

    /// The failure for `k` when what stands there is a control or non-ASCII character, which have
    /// their own words; `message` otherwise.
    func stray(_ k: Int, _ message: String) -> Failure {
        guard k < u.count else { return fail(k, message) }
        let c = u[k]
        if c == 0 { return nul(k) }
        if c == Self.cr && at(k + 1) != Self.lf { return bareCR(k) }
        if (c < 0x20 && c != Self.tab && c != Self.lf && c != Self.cr) || c == 0x7F {
            return fail(
                k,
                "TOML syntax: a control character (U+\(hex4(c))): only tab and line breaks are allowed outside strings")
        }
        if c >= 0x80 {
            return fail(
                k,
                "TOML syntax: a non-ASCII character outside a string or comment ('\(scalarText(k))'): a key with one must be quoted (\"clé\" = …), text belongs in quotes"
            )
        }
        return fail(k, message)
    }

    func nul(_ k: Int) -> Failure {
        fail(
            k,
            "the policy contains a NUL character (or a \\u0000 escape): the TOML library and the kernel would cut the string there"
        )
    }

    func bareCR(_ k: Int) -> Failure {
        fail(k, "TOML syntax: a carriage return (U+000D) without a line feed after it: TOML lines end in LF or CRLF")
    }

    func hex4(_ c: UInt8) -> String {
        let h = String(c, radix: 16, uppercase: true)
        return String(repeating: "0", count: 4 - h.count) + h
    }

    /// The 1-based line and column of byte `offset`; columns count characters, as editors do.
    func position(of offset: Int) -> SourcePosition {
        var line = 1
        var column = 1
        var k = u.count >= 3 && u[0] == 0xEF && u[1] == 0xBB && u[2] == 0xBF ? 3 : 0
        let end = min(offset, u.count)
        while k < end {
            if u[k] == Self.lf {
                line += 1
                column = 1
            } else if u[k] & 0xC0 != 0x80 {
                column += 1
            }
            k += 1
        }
        return SourcePosition(line: line, column: column)
    }
}
