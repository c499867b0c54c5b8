import Testing

@testable import NetshapePolicy

#if canImport(Glibc)
    import Glibc
#endif

/// The recogniser against toml-lang/toml-test, the official TOML corpus, when a copy is on this
/// machine (NETSHAPE_TOML_TEST names its `tests` directory; /tmp/tomltest/tests by default). Not a
/// CI requirement: the corpus is not in the repository, so without it the suite shows as skipped
/// (TOMLOracleTests is what CI checks the recogniser against). Every valid file must pass the recogniser;
/// every invalid one must be refused, by the recogniser, the UTF-8 check `PolicySource` makes, or
/// toml++ (which then sees only text the recogniser accepted, so it cannot abort).
/// NETSHAPE_TOML_TEST_VERBOSE=1 prints each invalid file's verdict, to read the recogniser's words.
@Suite(.enabled(if: TOMLCorpus.list != nil, Comment(rawValue: TOMLCorpus.absent)))
struct TOMLCorpusTests {
    static let dir = TOMLCorpus.dir

    @Test func theOfficialCorpusIsRecognised() throws {
        let list = try #require(TOMLCorpus.list)
        let files = String(decoding: list, as: UTF8.self).split(separator: "\n").filter { $0.hasSuffix(".toml") }
        var valid = (total: 0, accepted: 0)
        var invalid = (total: 0, recogniser: 0, utf8: 0, library: 0)
        for f in files {
            let bytes = try #require(readBytes(Self.dir + "/" + f), "\(f) is listed but unreadable")
            let text = String(validating: bytes, as: UTF8.self)
            if f.hasPrefix("valid/") {
                valid.total += 1
                let t = try #require(text, "\(f): not UTF-8")
                let problem = tomlSyntaxProblem(t, refusingNUL: false)
                #expect(
                    problem == nil,
                    "\(f) is valid TOML, refused: \(problem.map { "\($0.0.line):\($0.0.column): \($0.1)" } ?? "")")
                if problem == nil {
                    valid.accepted += 1
                    #expect(tomlLibraryError(t) == nil, "\(f): toml++ refuses it")
                }
            } else {
                invalid.total += 1
                guard let t = text else {
                    invalid.utf8 += 1
                    continue
                }
                if let (pos, message) = tomlSyntaxProblem(t, refusingNUL: false) {
                    invalid.recogniser += 1
                    if getenv("NETSHAPE_TOML_TEST_VERBOSE") != nil {
                        print("refused \(f):\(pos.line):\(pos.column): \(message)")
                    }
                } else if let e = tomlLibraryError(t) {
                    invalid.library += 1
                    if getenv("NETSHAPE_TOML_TEST_VERBOSE") != nil { print("toml++ refuses \(f): \(e)") }
                } else {
                    Issue.record("\(f) is invalid TOML, accepted by the recogniser and toml++")
                }
            }
        }
        print(
            "TOMLCorpusTests: valid \(valid.accepted)/\(valid.total) accepted; invalid \(invalid.total): "
                + "\(invalid.recogniser) refused by the recogniser, \(invalid.utf8) as not UTF-8, \(invalid.library) by toml++"
        )
        #expect(valid.total > 0 && invalid.total > 0, "the list names both kinds")
    }
}

/// Outside the suite: its trait reads these, and a suite's trait cannot name the suite itself.
enum TOMLCorpus {
    static let dir = getenv("NETSHAPE_TOML_TEST").map { String(cString: $0) } ?? "/tmp/tomltest/tests"
    static let absent = "no toml-test corpus at \(dir) (set NETSHAPE_TOML_TEST)"
    static let list: [UInt8]? = {
        let list = readBytes(dir + "/files-toml-1.0.0")
        if list == nil { print("TOMLCorpusTests: \(absent): not run") }
        return list
    }()
}

func readBytes(_ path: String) -> [UInt8]? {
    guard let f = fopen(path, "r") else { return nil }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        if n <= 0 { break }
        bytes += buf[0..<n]
    }
    return bytes
}
