import NetshapeCore
import NetshapeFailure
import NetshapeKernel
import NetshapePolicy
import Testing

@testable import NetshapeCLI
@testable import NetshapeCNI

/// The one failure mapping: the CLI's exit status and the CNI plugin's error code come from the
/// same classification, so the two front ends cannot drift apart.
@Suite struct FailureTests {
    @Test func invalidPolicyIs65AndCNICode7() throws {
        let e = PolicyError(diagnostics: [
            PolicyDiagnostic(file: "p.toml", position: SourcePosition(line: 3, column: 7), key: "rate", message: "bad")
        ])
        let f = try #require(Failure(e))
        #expect(f.kind == .invalidPolicy)
        #expect(f.exitStatus == 65)
        #expect(f.prefixed == false)
        #expect(f.message == e.description)
        let cni = CNIPlugin.cniError(e)
        #expect(cni.code == 7)
        #expect(cni.msg == "invalid netshape configuration")
        #expect(cni.details == e.description)
    }

    @Test func aMissingNamespaceIs1AndCNICode3() throws {
        let e = KernelError(.notFound, "open(/run/netns/x)", errno: KernelErrno.ENOENT, reason: "gone")
        let f = try #require(Failure(e))
        #expect(f.kind == .notFound)
        #expect(f.exitStatus == 1)
        #expect(f.message == "open(/run/netns/x): gone (errno 2)")
        #expect(CNIPlugin.cniError(e).code == 3)
    }

    @Test func aRefusalIs1AndCNICode999WithTheRootHintOnlyForNonRoot() throws {
        let e = KernelError(.syscall, "write(cgroup.procs)", errno: KernelErrno.EPERM, reason: "denied")
        let f = try #require(Failure(e))
        #expect(f.kind == .refused)
        #expect(f.exitStatus == 1)
        #expect((f.hint != nil) == !Syscall.isRoot)
        #expect(CNIPlugin.cniError(e).code == 999)
        #expect(CNIPlugin.cniError(e).msg == e.description)
    }

    @Test func anErrorWithItsOwnStatusKeepsIt() throws {
        let f = try #require(Failure(CLIError("cannot run x: not found", exitCode: 127)))
        #expect(f.exitStatus == 127)
        #expect(f.prefixed)
        #expect(try #require(Failure(CLIError("invalid", exitCode: 65))).kind == .invalidPolicy)
    }

    @Test func unknownErrorsAreLeftToArgumentParser() {
        struct Other: Error {}
        #expect(Failure(Other()) == nil)
        #expect(CNIPlugin.cniError(Other()).code == 999)
    }
}
