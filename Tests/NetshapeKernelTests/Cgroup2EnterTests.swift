import Foundation
import Glibc
import Testing

@testable import NetshapeKernel

/// `Cgroup2Mount.enter` on scratch directories standing in for cgroupfs (unprivileged): the
/// write goes into the directory whose id was checked, or nowhere.
@Suite struct Cgroup2EnterTests {
    final class Scratch {
        let mount: String
        init() throws {
            mount =
                FileManager.default.temporaryDirectory.appendingPathComponent(
                    "cg2enter-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
                ).path
            try make("app")
        }
        deinit { try? FileManager.default.removeItem(atPath: mount) }
        func make(_ sub: String) throws {
            try FileManager.default.createDirectory(atPath: mount + "/" + sub, withIntermediateDirectories: true)
            #expect(FileManager.default.createFile(atPath: mount + "/" + sub + "/cgroup.procs", contents: nil))
        }
        func procs(_ sub: String) -> String {
            (try? String(contentsOfFile: mount + "/" + sub + "/cgroup.procs", encoding: .utf8)) ?? "?"
        }
        func id(_ sub: String) throws -> UInt64 { try #require(Cgroup2Mount.id(mount: mount, path: sub)).id }
    }

    @Test func writesThePidIntoTheCheckedDirectory() throws {
        let s = try Scratch()
        try Cgroup2Mount.enter(pid: 4242, mount: s.mount, path: "app", id: try s.id("app"))
        #expect(s.procs("app") == "4242")
    }

    /// Removed and made again after the check (a restarted unit): another directory, another id,
    /// which the classifier's map does not hold. Nothing is written, and the error says why.
    @Test func aDirectoryMadeAgainAfterTheCheckIsNotEntered() throws {
        let s = try Scratch()
        let checked = try s.id("app")
        // Renamed away rather than removed, so the new directory cannot reuse the inode number.
        #expect(rename(s.mount + "/app", s.mount + "/old") == 0)
        try s.make("app")
        #expect(try s.id("app") != checked)
        let e = #expect(throws: KernelError.self) {
            try Cgroup2Mount.enter(pid: 4242, mount: s.mount, path: "app", id: checked)
        }
        #expect(e?.errno == ESTALE && e?.reason.contains("removed and made again") == true, "\(String(describing: e))")
        #expect(s.procs("app").isEmpty && s.procs("old").isEmpty)
    }

    @Test func aMissingDirectoryOrAFileIsNotACgroup() throws {
        let s = try Scratch()
        for path in ["gone", "app/cgroup.procs"] {
            let e = #expect(throws: KernelError.self) { try Cgroup2Mount.enter(pid: 1, mount: s.mount, path: path) }
            #expect(e?.reason.contains("is not a cgroup directory") == true, "\(path): \(String(describing: e))")
        }
    }

    /// The kernel's refusals are explained: EBUSY (controllers enabled for the children) and
    /// EOPNOTSUPP (a "domain invalid" cgroup in a threaded subtree), naming the cgroup's type.
    @Test func theKernelsRefusalsSayWhy() throws {
        let s = try Scratch()
        try "domain invalid\n".write(toFile: s.mount + "/app/cgroup.type", atomically: false, encoding: .utf8)
        for (errnum, words) in [(EBUSY, "controllers enabled"), (EOPNOTSUPP, "cgroup.type is \"domain invalid\"")] {
            let e = #expect(throws: KernelError.self) {
                try Cgroup2Mount.enter(pid: 1, mount: s.mount, path: "app", id: nil) { _, _, _ in
                    errno = errnum
                    return -1
                }
            }
            #expect(e?.errno == errnum && e?.reason.contains(words) == true, "\(String(describing: e))")
        }
    }
}
