import Foundation
import NetshapeTestSupport
import Testing

@testable import NetshapePolicy

/// The recogniser against an independent TOML 1.0 parser, Python's tomllib, on thousands of
/// generated documents and edits of them: what tomllib accepts, the recogniser must accept (a false
/// rejection refuses a policy a user may write); what only the recogniser accepts, toml++ must
/// refuse, or invalid TOML would become a policy. All documents go to one python3 process in one
/// file, so the test takes about a second. Seeded like FuzzTests (NETSHAPE_FUZZ_SEED replays).
@Suite(.enabled(if: Tomllib.probe.ok, Comment(rawValue: Tomllib.probe.why)))
struct TOMLOracleTests {
    /// One verdict a line, in document order: `ok`, or `refused` and tomllib's words. A leading
    /// byte order mark is the file's encoding, not TOML: the recogniser and toml++ pass over it, and
    /// tomllib leaves it to whoever decodes the file, so the script removes it as that decoder would.
    static let script = """
        import json, sys, tomllib
        out = []
        for d in json.loads(open(sys.argv[1], "rb").read()):
            try:
                tomllib.loads(d.removeprefix("\\ufeff"))
                out.append("ok")
            except Exception as e:
                out.append("refused " + type(e).__name__ + ": " + str(e).replace("\\n", " "))
        sys.stdout.write("\\n".join(out) + "\\n")
        """

    @Test func whatTomllibAcceptsTheRecogniserAccepts() throws {
        var g = TOMLGenerator(rng: SeededRandom(seed: FuzzTests.seed ^ 0x746F_6D6C))
        var docs: [String] = []
        for _ in 0..<400 {
            let text = g.document()
            docs.append(text)
            for _ in 0..<9 { docs.append(g.edit(text)) }
        }
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("netshape-tomloracle-\(getpid()).json")
        try JSONEncoder().encode(docs).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let r = try runPython(["-c", Self.script, file.path])
        try #require(r.status == 0, "python3 failed (\(r.status)): \(r.err)")
        let verdicts = r.out.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        try #require(verdicts.count == docs.count, "\(verdicts.count) verdicts for \(docs.count) documents")
        var figures = (tomllib: 0, recogniser: 0, onlyRecogniser: 0, library: 0)
        for (text, verdict) in zip(docs, verdicts) {
            let oracle = verdict == "ok"
            let problem = tomlSyntaxProblem(text, refusingNUL: false)
            if oracle { figures.tomllib += 1 }
            if problem == nil { figures.recogniser += 1 }
            if oracle, let (pos, message) = problem {
                Issue.record(
                    "seed \(FuzzTests.seed): tomllib accepts, the recogniser refuses at \(pos.line):\(pos.column): \(message) in\n\(text)"
                )
            } else if !oracle, problem == nil {
                figures.onlyRecogniser += 1
                let refused = tomlLibraryError(text) != nil
                if !refused { figures.library += 1 }
                #expect(
                    refused,
                    "seed \(FuzzTests.seed): tomllib refuses (\(verdict)), the recogniser and toml++ accept\n\(text)")
            }
        }
        print(
            "TOMLOracleTests seed \(FuzzTests.seed): \(docs.count) documents, tomllib accepts \(figures.tomllib), "
                + "the recogniser \(figures.recogniser) (\(figures.onlyRecogniser) that tomllib refuses, \(figures.library) of them accepted by toml++)"
        )
        #expect(figures.tomllib > 0 && figures.tomllib < docs.count, "the documents reach both verdicts")
    }
}

/// Outside the suite: its trait reads this, and a suite's trait cannot name the suite itself.
enum Tomllib {
    /// Probed rather than assumed: tomllib is Python 3.11's (scripts/deps installs python3).
    static let probe: (ok: Bool, why: String) = {
        let why = "python3 with tomllib (Python >= 3.11) is not on this machine"
        guard let r = try? runPython(["-c", "import tomllib"]), r.status == 0 else {
            print("TOMLOracleTests: \(why): not run")
            return (false, why)
        }
        return (true, why)
    }()
}

func runPython(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
    try runProgram("/usr/bin/env", ["python3"] + args)
}
