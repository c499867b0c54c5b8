import Foundation
import NetshapeTestSupport
import Testing

@testable import NetshapePolicy

/// The recogniser's edges: random documents built from the TOML 1.0 grammar (every key, value and
/// line form) must pass it and toml++ alike, and each is then cut at the places a recogniser gets
/// wrong (quotes, escapes, underscores, signs, `T`, `:`, line ends) by small edits. Every edited text
/// is either refused with a position inside the text, or reaches toml++, which must not abort.
/// Seeded like FuzzTests (NETSHAPE_FUZZ_SEED replays; `scripts/fuzz-policy` runs many seeds).
@Suite struct TOMLSyntaxFuzzTests {
    @Test func generatedDocumentsPassAndEditsNeverReachAnAbort() {
        var g = TOMLGenerator(rng: SeededRandom(seed: FuzzTests.seed ^ 0x7041_6C5F))
        var outcomes = (refused: 0, library: 0, accepted: 0)
        for _ in 0..<2000 {
            let text = g.document()
            if let f = getenvString("NETSHAPE_FUZZ_LAST") { writeFile(f, text) }
            let problem = tomlSyntaxProblem(text)
            #expect(problem == nil, "seed \(FuzzTests.seed): generated valid TOML refused: \(problem!) in\n\(text)")
            if problem == nil {
                let e = tomlLibraryError(text)
                #expect(e == nil, "seed \(FuzzTests.seed): toml++ refuses generated TOML: \(e!) in\n\(text)")
            }
            for _ in 0..<8 {
                let edited = g.edit(text)
                if let f = getenvString("NETSHAPE_FUZZ_LAST") { writeFile(f, edited) }
                if let (pos, message) = tomlSyntaxProblem(edited) {
                    outcomes.refused += 1
                    let lines = Array(edited.utf8).split(separator: 0x0A, omittingEmptySubsequences: false)
                    let inside =
                        pos.line >= 1 && pos.line <= lines.count && pos.column >= 1
                        && pos.column <= lines[pos.line - 1].filter { $0 & 0xC0 != 0x80 }.count + 1
                    #expect(inside, "seed \(FuzzTests.seed): \(pos) outside the text for \(message)")
                    #expect(!message.isEmpty)
                } else if let e = tomlLibraryError(edited) {
                    outcomes.library += 1
                    // What passes the recogniser may only fail for what it leaves to toml++.
                    let semantic = [
                        "cannot redefine", "cannot insert", "not representable", "could not be interpreted",
                        "second between", "exceed",
                    ]
                    #expect(
                        semantic.contains { e.contains($0) },
                        "seed \(FuzzTests.seed): toml++ refuses what the recogniser passed: \(e) in\n\(edited)")
                } else {
                    outcomes.accepted += 1
                }
            }
        }
        print(
            "TOML fuzz seed \(FuzzTests.seed): edits refused \(outcomes.refused), by toml++ \(outcomes.library), valid \(outcomes.accepted)"
        )
        #expect(outcomes.refused > 0 && outcomes.accepted > 0, "the edits reach both outcomes")
    }
}

func getenvString(_ name: String) -> String? { ProcessInfo.processInfo.environment[name] }

func writeFile(_ path: String, _ text: String) { try? text.write(toFile: path, atomically: false, encoding: .utf8) }
