import Testing

@testable import NetshapePolicy

/// The TOML 1.0 syntax recogniser (TOMLSyntax.swift), construct by construct: what it must let
/// through (and toml++ then accepts too), and what it refuses, where, in which words.
@Suite struct TOMLSyntaxTests {
    struct Accepted: CustomTestStringConvertible, Sendable {
        var what: String
        var text: String
        var testDescription: String { what }
    }

    static let accepted: [Accepted] = [
        .init(what: "empty document", text: ""),
        .init(what: "only blanks, comments and line breaks", text: "  \t\n# a comment\n\n   # another\t\n"),
        .init(what: "a comment holding any printable or non-ASCII text", text: "# ẞ 日本 \" ' [ { \\ \t ~\n"),
        .init(what: "a UTF-8 byte order mark", text: "\u{FEFF}a = 1\n"),
        .init(what: "CRLF line ends", text: "a = 1\r\n[t]\r\nb = \"x\" # c\r\nc = [\r\n1,\r\n]\r\n"),
        .init(what: "no line break at the end", text: "a = 1"),
        .init(what: "bare keys", text: "key = 1\nbare_key = 1\nbare-key = 1\n1234 = 1\n-_- = 1\nA = 1\n"),
        .init(
            what: "quoted keys", text: "\"127.0.0.1\" = 1\n\"ʎǝʞ\" = 1\n'key2' = 1\n'quoted \"value\"' = 1\n\"\" = 1\n"),
        .init(what: "an escape in a quoted key", text: "\"a\\u00E9\\t\" = 1\n"),
        .init(
            what: "dotted keys, blanks around the dots",
            text:
                "physical.color = 1\nsite.\"google.com\" = true\nfruit . flavor = 1\n3.14159 = \"pi\"\n a\t.\tb . 'c' = 1\n"
        ),
        .init(what: "no blanks around =", text: "a=1\nb =2\nc= 3\n"),
        .init(
            what: "table headers",
            text: "[table]\n[dog.\"tater.man\"]\n[ j . \"ʞ\" . 'l' ]\n  [ spaced ]  # c\n[a.b.c]\n"),
        .init(what: "array-of-tables headers", text: "[[products]]\nname = 1\n[[products]]\n[[ fruits.x ]]\n"),
        .init(
            what: "decimal integers",
            text: "a = 99\nb = +99\nc = 0\nd = -17\ne = 1_000\nf = 5_349_221\ng = 1_2_3_4_5\nh = +0\ni = -0\n"),
        .init(
            what: "hex, octal and binary integers",
            text: "a = 0xDEADBEEF\nb = 0xdead_beef\nc = 0o01234567\nd = 0o755\ne = 0b11010110\nf = 0b1_0\ng = 0x0\n"),
        .init(
            what: "floats",
            text:
                "a = +1.0\nb = 3.1415\nc = -0.01\nd = 5e+22\ne = 1e06\nf = -2E-2\ng = 6.626e-34\nh = 224_617.445_991_228\ni = 0.0\nj = -0.0\nk = 0e0\nl = 1_0.0_1e1_0\n"
        ),
        .init(what: "inf and nan", text: "a = inf\nb = +inf\nc = -inf\nd = nan\ne = +nan\nf = -nan\n"),
        .init(what: "booleans", text: "a = true\nb = false\n"),
        .init(
            what: "offset date-times",
            text:
                "a = 1979-05-27T07:32:00Z\nb = 1979-05-27T00:32:00-07:00\nc = 1979-05-27T00:32:00.999999-07:00\nd = 1979-05-27 07:32:00Z\ne = 1979-05-27t07:32:00z\nf = 2000-02-29T23:59:59+23:59\n"
        ),
        .init(
            what: "local date-times, dates and times",
            text:
                "a = 1979-05-27T07:32:00\nb = 1979-05-27T00:32:00.999999\nc = 1979-05-27 07:32:00\nd = 1979-05-27\ne = 07:32:00\nf = 00:32:00.999999\ng = 1979-05-27 # a date, then a comment\n"
        ),
        .init(
            what: "basic strings with every escape",
            text:
                "a = \"I'm a string. \\\"You can quote me\\\". Name\\tJos\\u00E9\\nLocation\\tSF.\"\nb = \"\\b\\t\\n\\f\\r\\\"\\\\\"\nc = \"\\U0001F600 \\uD7FF \\uE000 \\U0010FFFF\"\nd = \"tab\there\"\ne = \"\"\n"
        ),
        .init(
            what: "literal strings",
            text: "a = 'C:\\Users\\nodejs\\templates'\nb = '<\\i\\c*\\s*>'\nc = 'Tom \"Dubs\" Preston'\nd = ''\n"),
        .init(
            what: "multi-line basic strings",
            text:
                "a = \"\"\"\nRoses are red\nViolets are blue\"\"\"\nb = \"\"\"\nThe quick brown \\\n\n\n  fox jumps over \\\n    the lazy dog.\"\"\"\nc = \"\"\"Here are two quotation marks: \"\". Simple enough.\"\"\"\nd = \"\"\"Here are fifteen quotation marks: \"\"\\\"\"\"\\\"\"\"\\\"\"\"\\\"\"\"\\\".\"\"\"\ne = \"\"\"\"This,\" she said, \"is just a pointless statement.\"\"\"\"\nf = \"\"\"\"\"\"\ng = \"\"\"a\"\"\"\"\"\nh = \"\"\"trailing \\   \n  blanks\"\"\"\ni = \"\"\"crlf\r\nand a tab\t\"\"\"\n"
        ),
        .init(
            what: "multi-line literal strings",
            text:
                "a = '''I [dw]on't need \\d{2} apples'''\nb = '''\nThe first newline is\ntrimmed in raw strings.\n'''\nc = '''Here are fifteen quotation marks: \"\"\"\"\"\"\"\"\"\"\"\"\"\"\"'''\nd = ''''That,' she said, 'is still pointless.''''\ne = ''''''\n"
        ),
        .init(
            what: "arrays",
            text:
                "a = [ 1, 2, 3 ]\nb = [ \"red\", \"yellow\", \"green\" ]\nc = [ [ 1, 2 ], [3, 4, 5] ]\nd = [ \"all\", 'strings', \"\"\"are the same\"\"\", '''type''' ]\ne = [ [ 1, 2 ], [\"a\", \"b\", \"c\"] ]\nf = [ 0.1, 0.2, 0.5, 1, 2, 5 ]\ng = [\n  1,\n  2, # this is ok\n]\nh = []\ni = [ ]\nj = [\n# only a comment\n]\nk = [ { x = 1, y = 2 }, { x = 3 } ]\nl = [1,]\n"
        ),
        .init(
            what: "inline tables",
            text:
                "name = { first = \"Tom\", last = \"Preston-Werner\" }\npoint = { x = 1, y = 2 }\nanimal = { type.name = \"pug\" }\ne = {}\nf = { }\ng = {a=1,b={c=[1,\n2]}}\nh = { s = \"\"\"multi\nline\"\"\" }\n"
        ),
        .init(
            what: "keys with as many parts as allowed",
            text: "[" + Array(repeating: "t", count: maxKeyParts).joined(separator: ".") + "]\n"
                + Array(repeating: "k", count: maxKeyParts).joined(separator: " . ") + " = 1\n"),
        .init(
            what: "arrays and inline tables nested as deep as allowed",
            text: "a = " + String(repeating: "[", count: maxNesting) + String(repeating: "]", count: maxNesting) + "\n"),
    ]

    @Test(arguments: accepted) func validTOMLPasses(_ a: Accepted) {
        let problem = tomlSyntaxProblem(a.text)
        #expect(problem == nil, "\(a.what): \(problem.map { "\($0.0.line):\($0.0.column): \($0.1)" } ?? "")")
        #expect(tomlLibraryError(a.text) == nil, "\(a.what): toml++ agrees it is valid")
    }

    struct Refused: CustomTestStringConvertible, Sendable {
        var what: String
        var text: String
        var line: Int
        var column: Int
        var contains: String
        var testDescription: String { what }
    }

    static let refused: [Refused] = [
        // The two texts toml++ aborted the process on.
        .init(
            what: "a table-array header whose name begins with '['", text: "[[[a]]\n", line: 1, column: 3,
            contains: "table-array header"),
        .init(
            what: "a date-time with something else than the time after T",
            text: "version = 1\nx = 1979-05-27T\\07:32:00Z\n",
            line: 2, column: 16,
            contains: "a date and time are written 1979-05-27T07:32:00 (seconds included), found '\\'"),
        // Lines.
        .init(
            what: "a lone carriage return", text: "a = 1\rb = 2\n", line: 1, column: 6,
            contains: "carriage return (U+000D) without a line feed"),
        .init(
            what: "a lone carriage return where a value belongs", text: "a =\r\n b = 1\nc = \rd = 1\n", line: 1,
            column: 4, contains: "missing value after '=': found the end of the line"),
        .init(
            what: "a lone carriage return after =", text: "c = \rd = 1\n", line: 1, column: 5,
            contains: "carriage return (U+000D) without a line feed"),
        .init(
            what: "a control character outside strings", text: "a = 1\u{0B}\n", line: 1, column: 6,
            contains: "a control character (U+000B)"),
        .init(
            what: "a control character in a comment", text: "# a \u{7F}\n", line: 1, column: 5,
            contains: "a control character (U+007F) in a comment"),
        .init(what: "a NUL character", text: "a = 1\n\0", line: 2, column: 1, contains: "NUL character"),
        .init(what: "a \\u0000 escape", text: "a = \"x\\u0000\"\n", line: 1, column: 7, contains: "NUL character"),
        .init(
            what: "a line that is no key, header or comment", text: "a = 1\n= 2\n", line: 2, column: 1,
            contains: "unexpected '=': a line holds key = value"),
        .init(
            what: "two key/value pairs on a line", text: "a = 1 b = 2\n", line: 1, column: 7,
            contains: "unexpected 'b' after the value: one key = value per line"),
        .init(
            what: "a comma after a top-level value", text: "a = 1, b = 2\n", line: 1, column: 6,
            contains: "unexpected ',' after the value"),
        .init(
            what: "a BOM that is not at the start", text: "a = 1\n\u{FEFF}b = 2\n", line: 2, column: 1,
            contains: "a non-ASCII character outside a string or comment"),
        // Keys.
        .init(what: "a key missing before =", text: " = 1\n", line: 1, column: 2, contains: "unexpected '='"),
        .init(
            what: "a non-ASCII bare key", text: "größe = 1\n", line: 1, column: 3,
            contains: "non-ASCII character outside a string or comment ('ö'): a key with one must be quoted"),
        .init(
            what: "a key with a space in it", text: "my key = 1\n", line: 1, column: 4,
            contains: "expected '=' after the key, found 'k'"),
        .init(
            what: "a missing =", text: "name \"web\"\n", line: 1, column: 6,
            contains: "expected '=' after the key, found '\"'"),
        .init(
            what: "a key ending in a dot", text: "a. = 1\n", line: 1, column: 4,
            contains: "a key must start with a letter, a digit, '_', '-' or a quote, found '='"),
        .init(what: "two dots", text: "a..b = 1\n", line: 1, column: 3, contains: "a key must start with"),
        .init(
            what: "a key at the end of the line", text: "a.\n", line: 1, column: 3,
            contains: "a key is missing at the end of the line"),
        .init(
            what: "a multi-line key", text: "\"\"\"a\"\"\" = 1\n", line: 1, column: 1,
            contains: "a key cannot be a multi-line string"),
        .init(
            what: "an unterminated quoted key", text: "\"a = 1\n", line: 1, column: 1,
            contains: "unterminated string: add the closing \""),
        // = and values.
        .init(
            what: "a missing value", text: "a =\n", line: 1, column: 4,
            contains: "missing value after '=': found the end of the line"),
        .init(
            what: "a missing value at the end of the file", text: "a = ", line: 1, column: 5,
            contains: "found the end of the file"),
        .init(
            what: "unquoted text", text: "egress = 100mbit\n", line: 1, column: 10,
            contains: "this value is not valid TOML: put text in quotes"),
        .init(what: "a bare word", text: "a = web\n", line: 1, column: 5, contains: "put text in quotes"),
        .init(
            what: "an unknown punctuation value", text: "a = @\n", line: 1, column: 5, contains: "put text in quotes"),
        .init(
            what: "a capitalised boolean", text: "a = True\n", line: 1, column: 5,
            contains: "true and false are written in lower case, found 'True'"),
        .init(
            what: "a space inside a rate", text: "a = 10 mbit\n", line: 1, column: 8,
            contains: "unexpected 'm' after the value"),
        // Integers.
        .init(what: "a leading zero", text: "a = 01\n", line: 1, column: 5, contains: "a number may not start with 0"),
        .init(
            what: "a leading zero after a sign", text: "a = -012\n", line: 1, column: 6,
            contains: "may not start with 0"),
        .init(
            what: "a leading zero and an underscore", text: "a = 0_1\n", line: 1, column: 5,
            contains: "may not start with 0"),
        .init(
            what: "a trailing underscore", text: "a = 1_\n", line: 1, column: 6,
            contains: "'_' in a number must stand between two digits"),
        .init(what: "a double underscore", text: "a = 1__2\n", line: 1, column: 6, contains: "between two digits"),
        .init(what: "a leading underscore", text: "a = _1\n", line: 1, column: 5, contains: "put text in quotes"),
        .init(what: "a signed hex number", text: "a = +0x1\n", line: 1, column: 5, contains: "takes no sign"),
        .init(what: "an upper-case prefix", text: "a = 0XFF\n", line: 1, column: 6, contains: "in lower case"),
        .init(what: "a prefix without digits", text: "a = 0x\n", line: 1, column: 7, contains: "digits must follow 0x"),
        .init(
            what: "an underscore after the prefix", text: "a = 0b_1\n", line: 1, column: 7,
            contains: "digits must follow 0b"),
        .init(
            what: "a digit out of the radix", text: "a = 0o8\n", line: 1, column: 7, contains: "digits must follow 0o"),
        .init(
            what: "a hex digit in a binary number", text: "a = 0b10f\n", line: 1, column: 5,
            contains: "put text in quotes"),
        // Floats.
        .init(
            what: "a dot without digits after", text: "a = 1.\n", line: 1, column: 7,
            contains: "a digit must follow the decimal point"),
        .init(
            what: "a dot without digits before", text: "a = .5\n", line: 1, column: 5, contains: "put text in quotes"),
        .init(
            what: "a dot before the exponent", text: "a = 1.e5\n", line: 1, column: 7,
            contains: "a digit must follow the decimal point"),
        .init(
            what: "an exponent without digits", text: "a = 1e\n", line: 1, column: 7,
            contains: "the exponent needs digits"),
        .init(
            what: "an exponent with a sign only", text: "a = 1e+\n", line: 1, column: 8,
            contains: "the exponent needs digits"),
        .init(
            what: "an underscore before the dot", text: "a = 1_.5\n", line: 1, column: 6, contains: "between two digits"
        ),
        .init(what: "two dots", text: "a = 1.2.3\n", line: 1, column: 5, contains: "put text in quotes"),
        .init(what: "a capitalised inf", text: "a = Inf\n", line: 1, column: 5, contains: "put text in quotes"),
        .init(
            what: "a leading zero in a float", text: "a = 03.14\n", line: 1, column: 5, contains: "may not start with 0"
        ),
        // Dates and times.
        .init(
            what: "a month out of range", text: "a = 1979-13-27\n", line: 1, column: 10,
            contains: "month 13 does not exist"),
        .init(
            what: "February 29 in a common year", text: "a = 2023-02-29\n", line: 1, column: 13,
            contains: "day 29 does not exist in 2023-02"),
        .init(
            what: "a one-digit day", text: "a = 1979-05-7\n", line: 1, column: 14,
            contains: "a date is written YYYY-MM-DD"),
        .init(
            what: "a date-time without seconds", text: "a = 1979-05-27T07:32Z\n", line: 1, column: 21,
            contains: "seconds included"),
        .init(
            what: "a time without seconds", text: "a = 07:32\n", line: 1, column: 10,
            contains: "a time is written HH:MM:SS"),
        .init(
            what: "an hour out of range", text: "a = 24:00:00\n", line: 1, column: 5, contains: "hour 24 does not exist"
        ),
        .init(
            what: "a minute out of range", text: "a = 1979-05-27T07:60:00\n", line: 1, column: 19,
            contains: "minute 60 does not exist"),
        .init(
            what: "a second out of range", text: "a = 07:32:61\n", line: 1, column: 11,
            contains: "second 61 does not exist"),
        .init(
            what: "a fraction without digits", text: "a = 07:32:00.\n", line: 1, column: 14,
            contains: "digits must follow the '.'"),
        .init(
            what: "an offset without minutes", text: "a = 1979-05-27T07:32:00+07\n", line: 1, column: 27,
            contains: "an offset is written Z, +HH:MM or -HH:MM"),
        .init(
            what: "an offset hour out of range", text: "a = 1979-05-27T07:32:00+24:00\n", line: 1, column: 25,
            contains: "an offset of 24 hours"),
        .init(
            what: "text after the date", text: "a = 1979-05-27x\n", line: 1, column: 15,
            contains: "unexpected 'x' after the date"),
        .init(
            what: "an offset on a time of day", text: "a = 07:32:00Z\n", line: 1, column: 13, contains: "with no offset"
        ),
        .init(
            what: "a date, a space and no time", text: "a = 1979-05-27 07\n", line: 1, column: 16,
            contains: "unexpected '0' after the value"),
        // Strings.
        .init(
            what: "an unterminated string", text: "a = \"web\nb = 1\n", line: 1, column: 5,
            contains: "unterminated string: add the closing \" on the same line"),
        .init(
            what: "an unterminated literal string", text: "a = 'web", line: 1, column: 5,
            contains: "unterminated string: add the closing '"),
        .init(
            what: "an unknown escape", text: "a = \"C:\\dir\"\n", line: 1, column: 8,
            contains: "unknown escape sequence '\\d' in a \"…\" string: write \\\\ for a backslash"),
        .init(
            what: "a short \\u escape", text: "a = \"\\u12\"\n", line: 1, column: 6,
            contains: "\\u takes exactly 4 hexadecimal digits"),
        .init(
            what: "a non-hex \\U escape", text: "a = \"\\U0001F60G\"\n", line: 1, column: 6,
            contains: "\\U takes exactly 8 hexadecimal digits"),
        .init(
            what: "a surrogate escape", text: "a = \"\\uD800\"\n", line: 1, column: 6,
            contains: "\\uD800 names no character"),
        .init(
            what: "an escape above U+10FFFF", text: "a = \"\\U00110000\"\n", line: 1, column: 6,
            contains: "names no character"),
        .init(
            what: "a backslash at the end of a one-line string", text: "a = \"x\\\ny\"\n", line: 1, column: 7,
            contains: "a backslash at the end of the line"),
        .init(
            what: "a control character in a string", text: "a = \"x\u{01}\"\n", line: 1, column: 7,
            contains: "a control character (U+0001) inside a string"),
        .init(
            what: "a control character in a literal string", text: "a = 'x\u{1F}'\n", line: 1, column: 7,
            contains: "which has no escapes"),
        .init(
            what: "an unterminated multi-line string", text: "a = \"\"\"\nabc\n", line: 1, column: 5,
            contains: "unterminated multi-line string: the file ends before its closing \"\"\""),
        .init(
            what: "an unterminated multi-line literal string", text: "a = '''abc''\n", line: 1, column: 5,
            contains: "closing '''"),
        .init(
            what: "six quotes closing a multi-line string", text: "a = \"\"\"a\"\"\"\"\"\"\n", line: 1, column: 9,
            contains: "too many quotes"),
        .init(
            what: "a backslash and a blank before text", text: "a = \"\"\"a\\ b\"\"\"\n", line: 1, column: 9,
            contains: "a line-ending backslash must be the last thing"),
        .init(
            what: "a bare CR in a multi-line string", text: "a = \"\"\"a\rb\"\"\"\n", line: 1, column: 9,
            contains: "carriage return"),
        .init(
            what: "an escape in a multi-line string", text: "a = \"\"\"\\q\"\"\"\n", line: 1, column: 8,
            contains: "unknown escape sequence '\\q'"),
        // Arrays.
        .init(
            what: "an unclosed array", text: "a = [1, 2", line: 1, column: 10,
            contains: "unclosed array: the file ends before its closing ]"),
        .init(
            what: "a missing comma", text: "a = [1 2]\n", line: 1, column: 8,
            contains: "expected ',' between the array's values, or its closing ], found '2'"),
        .init(
            what: "a leading comma", text: "a = [,1]\n", line: 1, column: 6,
            contains: "expected a value or the closing ] of the array, found ','"),
        .init(
            what: "two commas", text: "a = [1,,2]\n", line: 1, column: 8, contains: "expected a value or the closing ]"),
        .init(
            what: "a brace where a value belongs", text: "a = [}]\n", line: 1, column: 6,
            contains: "'}' where the array expects a value"),
        .init(
            what: "too deep",
            text: "a = " + String(repeating: "[", count: maxNesting + 1)
                + String(repeating: "]", count: maxNesting + 1),
            line: 1, column: 5 + maxNesting, contains: "nested more than \(maxNesting) deep"),
        .init(
            what: "a key of too many parts",
            text: Array(repeating: "k", count: maxKeyParts + 1).joined(separator: ".") + " = 1\n",
            line: 1, column: 2 * maxKeyParts + 1, contains: "more than \(maxKeyParts) dotted parts"),
        .init(
            what: "a header of too many parts",
            text: "[[" + Array(repeating: "t", count: maxKeyParts + 1).joined(separator: " . ") + "]]\n",
            line: 1, column: 3 + 4 * maxKeyParts, contains: "more than \(maxKeyParts) dotted parts"),
        .init(
            what: "a control character in an array's comment", text: "a = [ # \u{07}\n]\n", line: 1, column: 9,
            contains: "in a comment"),
        // Inline tables.
        .init(
            what: "a trailing comma in an inline table", text: "a = { b = 1, }\n", line: 1, column: 14,
            contains: "a comma before '}': TOML allows no trailing comma in an inline table"),
        .init(
            what: "a line break in an inline table", text: "a = { b = 1,\nc = 2 }\n", line: 1, column: 13,
            contains: "must fit on one line"),
        .init(
            what: "a missing comma in an inline table", text: "a = { b = 1 c = 2 }\n", line: 1, column: 13,
            contains: "expected ',' or the closing } of the inline table, found 'c'"),
        .init(
            what: "a missing = in an inline table", text: "a = { b }\n", line: 1, column: 9,
            contains: "expected '=' after the key, found '}'"),
        .init(
            what: "a leading comma in an inline table", text: "a = { , b = 1 }\n", line: 1, column: 7,
            contains: "a key must start with"),
        .init(
            what: "a comment in an inline table", text: "a = { b = 1 # c\n}\n", line: 1, column: 13,
            contains: "expected ',' or the closing }"),
        // Headers.
        .init(
            what: "an unclosed header", text: "[namespace\n", line: 1, column: 11,
            contains: "unclosed table header: it needs its closing ]"),
        .init(
            what: "an unclosed array-of-tables header", text: "[[namespace]\n", line: 1, column: 13,
            contains: "unclosed table header: it needs its closing ]]"),
        .init(
            what: "a split ]]", text: "[[a] ]\n", line: 1, column: 5,
            contains: "expected the closing ]] of the table header, found a space"),
        .init(what: "an empty header", text: "[]\n", line: 1, column: 2, contains: "a table header needs a name"),
        .init(
            what: "a space in a header name", text: "[a b]\n", line: 1, column: 4,
            contains: "expected the closing ] of the table header, found 'b'"),
        .init(
            what: "text after a header", text: "[a] b = 1\n", line: 1, column: 5,
            contains: "unexpected 'b' after the table header"),
        .init(what: "a header in a header", text: "[ [a] ]\n", line: 1, column: 3, contains: "a key must start with"),
    ]

    @Test(arguments: refused) func invalidTOMLIsRefusedWhereItIs(_ r: Refused) throws {
        let (position, message) = try #require(tomlSyntaxProblem(r.text), "\(r.what): accepted")
        #expect(position == SourcePosition(line: r.line, column: r.column), "\(r.what): \(message)")
        #expect(message.contains(r.contains), "\(r.what): \(message)")
    }

    /// Through the parser's entry point, the two texts toml++ aborted the process on are positioned
    /// errors (before, the process died with SIGABRT inside toml++).
    @Test(arguments: ["[[[a]]\n", "version = 1\nx = 1979-05-27T\\07:32:00Z\n"])
    func theAbortReprosArePolicyErrors(_ text: String) {
        #expect(throws: PolicyError.self) { try PolicyParser.parse(text, file: "x.toml") }
    }

    /// A key of 100 000 parts overflowed the stack in toml++ / TOMLKit (SIGSEGV, not an assertion).
    @Test func aKeyOfAHundredThousandPartsIsAnError() {
        let parts = Array(repeating: "a", count: 100_000).joined(separator: ".")
        for text in ["version = 1\n\(parts) = 1\n", "version = 1\n[\(parts)]\n"] {
            #expect(throws: PolicyError.self) { try PolicyParser.parse(text, file: "x.toml") }
        }
    }

    @Test func columnsCountCharactersNotBytes() throws {
        let (position, _) = try #require(tomlSyntaxProblem("ü = 1\n\"é\" = ü\n"))
        #expect(position == SourcePosition(line: 1, column: 1))
        let (p2, m2) = try #require(tomlSyntaxProblem("\"é\" = ü\n"))
        #expect(p2 == SourcePosition(line: 1, column: 7), "\(m2)")
    }

    /// A semantic error is toml++'s to report: the recogniser lets it through.
    @Test func duplicatesAreLeftToTheLibrary() {
        for text in ["a = 1\na = 2\n", "[t]\n[t]\n", "a = 1\n[a]\n", "a = {b = 1}\na.c = 2\n"] {
            #expect(tomlSyntaxProblem(text) == nil, "\(text)")
            #expect(tomlLibraryError(text) != nil, "\(text)")
        }
    }

    /// `\u0000` is valid TOML; the policy refuses it by default, the corpus check does not.
    @Test func aNulEscapeIsRefusedOnlyForPolicies() {
        #expect(tomlSyntaxProblem("a = \"\\u0000\"\n")?.1.contains("NUL") == true)
        #expect(tomlSyntaxProblem("a = \"\\u0000\"\n", refusingNUL: false) == nil)
        #expect(tomlSyntaxProblem("a = '\\u0000'\n") == nil, "plain text in a literal string")
        #expect(tomlSyntaxProblem("a = \"\\\\u0000\"\n") == nil, "an escaped backslash, then text")
    }
}
