/// toml++ (under TOMLKit) words its errors for people who know the TOML grammar ("Error while
/// parsing string: unescaped control characters other than TAB (U+0009) are explicitly
/// prohibited"). This rewords the common ones for the person who wrote the policy, and moves the
/// position where that helps (an unterminated string is reported at its opening quote, as compilers
/// do, not at the end of the line where toml++ noticed).
enum TOMLSyntaxMessage {
    /// The position and message to report for toml++'s `raw` error at `position` in `text`.
    static func reword(_ raw: String, at position: SourcePosition, in text: String) -> (SourcePosition, String) {
        // "Error while parsing CONTEXT: REASON"
        var context = ""
        var reason = raw
        if raw.hasPrefix("Error while parsing "), let colon = raw.firstRange(of: ": ") {
            context = String(raw[raw.index(raw.startIndex, offsetBy: 20)..<colon.lowerBound])
            reason = String(raw[colon.upperBound...])
        }
        let line = lineScalars(text, position.line)
        let at = position.column - 1
        let here: Unicode.Scalar? = at >= 0 && at < line.count ? line[at] : nil
        let atLineEnd = here == nil || here == "\n" || here == "\r"
        let saw = sawText(reason)

        if context.contains("string") {
            let literal = context.contains("literal")
            let quote: Unicode.Scalar = literal ? "'" : "\""
            let triple = String(repeating: String(quote), count: 3)
            if reason.contains("end-of-file") && isMultiline(line, before: at, quote: quote) {
                return (
                    position,
                    "unterminated multi-line string: the file ends before its closing \(triple)"
                )
            }
            if (reason.contains("control character") && atLineEnd) || reason.contains("end-of-file") {
                let start = openingQuote(line, before: at, quote: quote).map {
                    SourcePosition(line: position.line, column: $0 + 1)
                }
                return (
                    start ?? position,
                    "unterminated string: add the closing \(String(quote)) on the same line (a string that spans lines is written \(triple)…\(triple))"
                )
            }
            if reason.contains("control character"), let c = here {
                return (
                    position,
                    "a control character (U+\(hex4(c.value))) inside a string: write it as an escape (\\t, \\u\(hex4(c.value)))"
                )
            }
            if reason.hasPrefix("unknown escape sequence") {
                return (
                    position,
                    "\(reason) in a \"…\" string: write \\\\ for a backslash, or use single quotes, in which a backslash is plain text ('C:\\dir')"
                )
            }
        }
        if reason.hasPrefix("expected '=', saw") {
            return (
                position,
                "expected '=' after the key, found \(saw): write key = value (a key with spaces in it must be quoted)"
            )
        }
        if reason == "could not determine value type" {
            return (
                position,
                "this value is not valid TOML: put text in quotes (egress = \"100mbit\"); only numbers, true and false are written bare"
            )
        }
        if reason.hasPrefix("expected value, saw") {
            return (position, "missing value after '=': found \(saw)")
        }
        if reason.hasPrefix("expected a comment or whitespace, saw") {
            return (
                position,
                "unexpected \(saw) after the value: one key = value per line, and text with spaces belongs inside the quotes"
            )
        }
        if context == "table header" && reason.hasPrefix("expected ']'") {
            let header = line.drop { $0 == " " || $0 == "\t" }
            let double = header.count > 1 && header[header.startIndex] == "[" && header[header.startIndex + 1] == "["
            return (position, "unclosed table header: it needs its closing \(double ? "]]" : "]")")
        }
        if let (kind, name) = redefinition(reason) {
            if context == "table header" {
                if reason.hasSuffix("as array-of-tables") {
                    return (
                        position, "[\(name)] is written as one table above; write [[\(name)]] every time for a list"
                    )
                }
                if kind == "array" {
                    return (position, "[[\(name)]] is a list above; write [[\(name)]] here too, not [\(name)]")
                }
                return (position, "[\(name)] appears twice: put all its keys under one [\(name)] header")
            }
            return (position, "duplicate key '\(name)': it is already set in this table")
        }
        if context == "array" {
            if reason.contains("end-of-file") {
                return (position, "unclosed array: the file ends before its closing ]")
            }
            if reason.hasPrefix("expected comma or closing ']'") {
                return (position, "expected ',' between the array's values, or its closing ], found \(saw)")
            }
        }
        if context == "inline table" {
            if reason.contains("dangling comma") {
                return (position, "a comma before '}': TOML allows no trailing comma in an inline table { … }")
            }
            if reason.hasPrefix("expected key or closing '}'") || reason.hasPrefix("expected comma or closing '}'") {
                return (
                    position,
                    "expected ',' or the closing } of the inline table, found \(saw) (an inline table { … } must fit on one line)"
                )
            }
        }
        if reason.hasPrefix("expected keys, tables, whitespace or comments, saw") {
            return (position, "unexpected \(saw): a line holds key = value, a [table] header or a # comment")
        }
        if context == "boolean" {
            return (position, "true and false are written in lower case, found \(saw)")
        }
        if reason == "leading zeroes are prohibited" {
            return (position, "a number may not start with 0 (write 1, not 01)")
        }
        if reason.contains("end-of-file") {
            return (position, "the file ends in the middle of \(context.isEmpty ? "a value" : "a \(context)")")
        }
        return (position, "TOML syntax: \(context.isEmpty ? "" : "in a \(context): ")\(reason)")
    }

    static func lineScalars(_ text: String, _ n: Int) -> [Unicode.Scalar] {
        var lineNo = 1
        for l in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if lineNo == n { return Array(l.unicodeScalars) }
            lineNo += 1
        }
        return []
    }

    /// The quote that opens the string still open at `end`: the last unescaped one before it
    /// (an unterminated string has no closing quote after its opening one).
    static func openingQuote(_ line: [Unicode.Scalar], before end: Int, quote: Unicode.Scalar) -> Int? {
        var i = min(end, line.count) - 1
        while i >= 0 {
            if line[i] == quote && (quote == "'" || i == 0 || line[i - 1] != "\\") { return i }
            i -= 1
        }
        return nil
    }

    static func isMultiline(_ line: [Unicode.Scalar], before end: Int, quote: Unicode.Scalar) -> Bool {
        guard let q = openingQuote(line, before: end, quote: quote), q >= 2 else { return false }
        return line[q - 1] == quote && line[q - 2] == quote
    }

    /// "saw 'x'" as prose: the character, or the end of the line or file.
    static func sawText(_ reason: String) -> String {
        guard let r = reason.firstRange(of: "saw ") else { return "something else" }
        let s = String(reason[r.upperBound...])
        switch s {
        case "'\\n'", "'\\r'": return "the end of the line"
        case "EOF": return "the end of the file"
        case "comma": return "','"
        default: return s
        }
    }

    /// `cannot redefine existing KIND 'NAME'…` → (KIND, NAME).
    static func redefinition(_ reason: String) -> (String, String)? {
        guard reason.hasPrefix("cannot redefine existing "), let q1 = reason.firstIndex(of: "'") else { return nil }
        let kind = reason.dropFirst(25).prefix { $0 != " " }
        let rest = reason[reason.index(after: q1)...]
        guard let q2 = rest.firstIndex(of: "'") else { return nil }
        return (String(kind), String(rest[..<q2]))
    }

    static func hex4(_ v: UInt32) -> String {
        let h = String(v, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, 4 - h.count)) + h
    }
}
