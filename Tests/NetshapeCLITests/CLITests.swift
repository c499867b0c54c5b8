import ArgumentParser
import Foundation
import Testing

@testable import NetshapeCLI

/// The built binary (the CLI's exit statuses are part of the contract).
let binary: String = {
    if let b = ProcessInfo.processInfo.environment["NETSHAPE_BINARY"] { return b }
    return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent(".build/debug/netshape").path
}()

func runBinary(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
    try runProgram(binary, args)
}

/// Runs `path` with `args` and returns its exit status and output. Both pipes are drained before
/// the wait: output that outgrows a pipe's buffer would otherwise block the child forever.
func runProgram(_ path: String, _ args: [String]) throws -> (status: Int32, out: String, err: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    let o = Pipe()
    let e = Pipe()
    p.standardOutput = o
    p.standardError = e
    try p.run()
    let out = o.fileHandleForReading.readDataToEndOfFile()
    let err = e.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
}

func tempPolicy(_ text: String) throws -> String {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("netshape-cli-\(UUID().uuidString).toml")
    try text.write(to: url, atomically: true, encoding: .utf8)
    return url.path
}

@Suite struct ParsingTests {
    @Test func applyFlags() throws {
        let cmd = try #require(try Netshape.parseAsRoot(["apply", "p.toml", "--dry-run", "--force"]) as? Apply)
        #expect(cmd.options.policy == "p.toml")
        #expect(cmd.dryRun && cmd.force && !cmd.verbose)
    }

    @Test func planAndStatusOptions() throws {
        let plan = try #require(try Netshape.parseAsRoot(["plan", "p.toml", "--json"]) as? Plan)
        #expect(plan.json)
        let status = try #require(try Netshape.parseAsRoot(["status", "--json", "--interval", "0.5"]) as? Status)
        #expect(status.policy == nil && status.json && status.interval == 0.5)
    }

    @Test func runTakesTheCommandAfterTheTerminator() throws {
        let run = try #require(
            try Netshape.parseAsRoot(["run", "p.toml", "web/frontend", "--", "iperf3", "-c", "x"]) as? Run)
        #expect(run.target.class == "web/frontend")
        #expect(run.command == ["iperf3", "-c", "x"])
        #expect(throws: (any Error).self) { try Netshape.parseAsRoot(["run", "p.toml", "frontend"]) }
    }

    @Test func classifyNeedsPids() throws {
        let c = try #require(try Netshape.parseAsRoot(["classify", "p.toml", "backup", "12", "34"]) as? Classify)
        #expect(c.pids == [12, 34])
        #expect(throws: (any Error).self) { try Netshape.parseAsRoot(["classify", "p.toml", "backup"]) }
        #expect(throws: (any Error).self) { try Netshape.parseAsRoot(["classify", "p.toml", "backup", "x"]) }
    }

    @Test func helpSnapshots() {
        #expect(
            Netshape.helpMessage(for: Apply.self, columns: 100) == """
                OVERVIEW: Converge the machine to the policy: create, change in place, or remove what differs.

                Idempotent: a second apply of the same policy changes nothing. Never deletes or replaces an object
                netshape did not create; a device whose root qdisc someone else set is refused unless --force. A
                failure half-way rolls back what this run changed.

                USAGE: netshape apply <policy> [--dry-run] [--force] [--verbose]

                ARGUMENTS:
                  <policy>                The policy file (TOML).

                OPTIONS:
                  --dry-run               Only print what would change (the same as plan).
                  --force                 Replace a root qdisc netshape did not create.
                  -v, --verbose           Log every change as it is made.
                  --version               Show the version.
                  -h, --help              Show help information.

                """)
        let root = Netshape.helpMessage(columns: 100)
        for sub in ["check", "plan", "apply", "status", "reset", "run", "classify"] {
            #expect(root.contains("\n  \(sub) "), "root help lists \(sub)")
        }
        #expect(
            root.contains("Exit status: 0 success, 1 the machine refused something, 2 usage error, 65 invalid policy."))
    }
}

/// Exit statuses and error formats of the binary (no privileges needed: check only reads).
@Suite struct ExitStatusTests {
    @Test func validPolicyExitsZero() throws {
        let p = try tempPolicy("version = 1\n[[namespace]]\nname = \"a\"\negress = \"10mbit\"\n")
        defer { try? FileManager.default.removeItem(atPath: p) }
        let r = try runBinary(["check", p])
        #expect(r.status == 0)
        #expect(r.out.contains("valid"))
    }

    @Test func invalidPolicyExits65WithFileLineColumn() throws {
        let p = try tempPolicy("version = 1\n[[namespace]]\nname = \"a\"\negress = \"10mbitt\"\n")
        defer { try? FileManager.default.removeItem(atPath: p) }
        let r = try runBinary(["check", p])
        #expect(r.status == 65)
        #expect(r.err.hasPrefix("\(p):4:1: error: "), "\(r.err)")
        #expect(r.err.contains("egress"))
    }

    @Test func usageErrorsExit2() throws {
        let r = try runBinary(["check"])
        #expect(r.status == 2)
        #expect(r.err.hasPrefix("netshape: error: "), "\(r.err)")
        #expect(try runBinary(["frobnicate"]).status == 2)
    }

    @Test func missingFileIsAMachineError() throws {
        let r = try runBinary(["check", "/nonexistent/policy.toml"])
        #expect(r.status == 1)
        #expect(r.err.hasPrefix("netshape: error: cannot read policy /nonexistent/policy.toml"), "\(r.err)")
    }

    @Test func shippedExamplesPassCheck() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("policies")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".toml") }
        #expect(!files.isEmpty)
        for f in files {
            let r = try runBinary(["check", dir.appendingPathComponent(f).path])
            #expect(r.status == 0, "\(f): \(r.err)")
        }
    }
}
