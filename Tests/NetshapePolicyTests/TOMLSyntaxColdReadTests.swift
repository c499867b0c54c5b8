import Testing

@testable import NetshapePolicy

/// Valid TOML 1.0 as policy authors write it: the recogniser must pass all of it (a refusal is a
/// user-facing regression), and toml++ agrees it is valid.
@Suite struct TOMLSyntaxColdReadTests {
    static let valid: [String] = [
        "a = [\n  1, # one\n  2,\n  # between\n]\n",
        "a = [ # after the bracket\n 1 ]\n",
        "t = { x = 1, y = \"b\", z.w = 2 }\n",
        "\"quoted key\".'lit'.bare = 1\n",
        "a . b = 1\n",
        "a = 1\r\nb = 2\r\n",
        "a = \"\"\"\r\nline\r\n\"\"\"\r\n",
        "a = [\r\n  1,\r\n  2,\r\n]\r\n",
        "\ta\t=\t1\t\n",
        "name = \"é 😀 \\u00e9 \\U0001F600\"  # café ☕\n",
        "a = 1   \n[t]   \n",
        "a = 1",
        "# only a comment",
        "\u{FEFF}a = 1\n",
        "[ t . 'u' ]\n",
        "[[ arr ]]\n",
        "a = 'C:\\path'\n",
        "a = '''\nraw \\ ''text''\n'''\n",
        "a = \"\"\"\nline \\\n   continued\"\"\"\n",
        "a = \"\"\"\"\"\"\n",
        "a = \"\"\"x\"\"\"\"\"\n",
        "a = 1_000\nb = 0xDEAD_beef\nc = 1e10\nd = -0.5\ne = inf\nf = -nan\ng = +1\n",
        "d = 1979-05-27T07:32:00Z\ne = 1979-05-27 07:32:00.999999-07:00\nf = 07:32:00\ng = 1979-05-27\n",
        "a = []\nb = [[]]\nc = [ {} ]\nd = {}\n",
        "a = [\"x\",]\n",
        "[t]\n\n\n\n",
        "",
        "\n",
        "a = true\nb=false\n",
        "a = \"tab\there\"\n",
        "k = 1 #\n",
        "[t] # c\n[[u]] # c\n",
        "a = [1,\n\n\n2]\n",
        "1234 = 1\n- = 2\n_ = 3\n",
        "\"\" = 1\n",
        "a = 1 # comment with \t tab\n",
    ]

    @Test func validTOMLPasses() {
        for text in Self.valid {
            let problem = tomlSyntaxProblem(text)
            #expect(
                problem == nil,
                "\(text.debugDescription): \(problem.map { "\($0.0.line):\($0.0.column) \($0.1)" } ?? "")")
            if problem == nil {
                #expect(tomlLibraryError(text) == nil, "toml++ on \(text.debugDescription)")
            }
        }
    }
}
