// Checks on the raw text, made before TOMLKit sees it: what the TOML library would accept
// silently wrong (a NUL cut in C) or report in words a policy author cannot act on.

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
/// `maxNesting + 1`, a `}` where an array expects a value or its `]` (`[}`, `[1, }`), or a
/// table-array header whose name begins with `[` (`[[[a]]`, `[[ [a]]`: an assertion in toml++'s
/// `parse_key`, found by the fuzz test, seed 379350135; the release build aborts on it too).
func bracketProblem(_ text: String) -> (SourcePosition, String)? {
    var line = 1
    var col = 1
    var open: [UInt8] = []
    var expectValue = false
    // Only blanks since the last line break outside strings: a `[` here at the top level opens a header.
    var lineStart = true
    var quote: UInt8? = nil
    var triple = false
    var comment = false
    let u = Array(text.utf8)
    var i = 0
    while i < u.count {
        let c = u[i]
        var step = 1
        if comment {
            if c == 0x0A {
                comment = false
                lineStart = true
            }
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
            lineStart = false
        } else if c == 0x23 {
            comment = true
        } else if c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D {
            // blanks keep whatever is expected
            if c == 0x0A { lineStart = true }
        } else {
            if lineStart && open.isEmpty && c == 0x5B && i + 1 < u.count && u[i + 1] == 0x5B {
                var j = i + 2
                while j < u.count && (u[j] == 0x20 || u[j] == 0x09) { j += 1 }
                if j < u.count && u[j] == 0x5B {
                    return (
                        SourcePosition(line: line, column: col),
                        "TOML syntax: a table-array header `[[NAME]]` whose name begins with '['; write `[[namespace]]` or `[[namespace.class]]`"
                    )
                }
            }
            lineStart = false
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
