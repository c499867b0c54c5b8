import Glibc
import Testing

@testable import NetshapeKernel

/// The syscall layer's loops, on pipes and a scratch directory (unprivileged).
@Suite struct SyscallTests {
    /// A pipe holds 64 KiB: writing four times that blocks until a reader drains it, so readToEnd
    /// runs many rounds and the bytes must come through whole and in order (short writes: below).
    @Test func writeAllAndReadToEndRoundTripThroughAPipe() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let payload = (0..<(256 * 1024)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let writer = fds[1]
        try startThread(name: "test-writer") {
            try? Syscall.writeAll(writer, payload, what: "test pipe")
            close(writer)
        }
        defer { close(fds[0]) }
        let got = try Syscall.readToEnd(fds[0], what: "test pipe", limit: Int.max, chunk: 1000)
        #expect(got.count == payload.count)
        #expect(got == payload)
    }

    /// A blocking pipe never short-writes, so the round trip above cannot see a writeAll that
    /// stops early: here write(2) takes at most 7 bytes a call and is interrupted once.
    @Test func writeAllContinuesAfterShortWritesAndEINTR() throws {
        let payload = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) }
        var got: [UInt8] = []
        var calls = 0
        try Syscall.writeAll(3, payload, what: "fake") { fd, p, n in
            calls += 1
            #expect(fd == 3)
            if calls == 2 {
                errno = EINTR
                return -1
            }
            let k = min(n, 7)
            got += UnsafeRawBufferPointer(start: p, count: k)
            return k
        }
        #expect(got == payload)
        #expect(calls == (payload.count + 6) / 7 + 1)
        // A real error is thrown, naming the object, after what was written.
        var failing = 0
        #expect {
            try Syscall.writeAll(3, payload, what: "fake pipe") { _, _, n in
                failing += 1
                if failing == 1 { return min(n, 10) }
                errno = EPIPE
                return -1
            }
        } throws: { e in
            (e as? KernelError)?.errno == EPIPE && "\(e)".contains("write(fake pipe)")
        }
    }

    /// writeOnce never continues (a second write would be a second cgroupfs command): a short
    /// write is an error, and the call is made exactly once.
    @Test func writeOnceCallsOnceAndReportsAShortWrite() throws {
        var calls = 0
        #expect {
            try Syscall.writeOnce(3, Array("12345\n".utf8), what: "cgroup.procs") { _, _, n in
                calls += 1
                return n - 1
            }
        } throws: { e in
            (e as? KernelError)?.errno == EIO && "\(e)".contains("short write (5 of 6)")
        }
        #expect(calls == 1)
        try Syscall.writeOnce(3, Array("1\n".utf8), what: "cgroup.procs") { _, _, n in n }
    }

    @Test func readToEndStopsAtTheLimitOrThrowsTooLarge() throws {
        struct TooLarge: Error {}
        func filledPipe(_ n: Int) throws -> Int32 {
            var fds: [Int32] = [0, 0]
            #expect(pipe(&fds) == 0)
            try Syscall.writeAll(fds[1], [UInt8](repeating: 9, count: n), what: "test pipe")
            close(fds[1])
            return fds[0]
        }
        let a = try filledPipe(5000)
        defer { close(a) }
        #expect(try Syscall.readToEnd(a, what: "a", limit: 3000, chunk: 1024).count == 3000)
        let b = try filledPipe(5000)
        defer { close(b) }
        #expect(throws: TooLarge.self) { try Syscall.readToEnd(b, what: "b", limit: 4999, chunk: 1024) { TooLarge() } }
        let c = try filledPipe(5000)
        defer { close(c) }
        #expect(try Syscall.readToEnd(c, what: "c", limit: 5000, chunk: 1024) { TooLarge() }.count == 5000)
    }

    @Test func readErrorsKeepErrnoAndName() {
        #expect {
            _ = try Syscall.readToEnd(-1, what: "nothing-open")
        } throws: { e in
            (e as? KernelError)?.errno == EBADF && (e as? KernelError)?.operation == "read(nothing-open)"
        }
    }

    @Test func writeOnceRefusesAClosedPipeWithItsErrno() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        close(fds[0])
        defer { close(fds[1]) }
        signal(SIGPIPE, SIG_IGN)
        #expect {
            try Syscall.writeOnce(fds[1], [1, 2, 3], what: "closed pipe")
        } throws: { e in
            (e as? KernelError)?.errno == EPIPE
        }
    }

    @Test func entriesListNamesAndOptionallyOnlyDirectories() throws {
        var template = Array("/tmp/netshape-syscall-XXXXXX".utf8CString)
        let dir = try #require(mkdtemp(&template).map { String(cString: $0) })
        defer {
            unlink("\(dir)/file")
            rmdir("\(dir)/sub")
            rmdir(dir)
        }
        #expect(mkdir("\(dir)/sub", 0o755) == 0)
        let fd = open("\(dir)/file", O_WRONLY | O_CREAT, 0o644)
        #expect(fd >= 0)
        close(fd)
        #expect(Syscall.entries(at: dir).sorted() == ["file", "sub"])
        #expect(Syscall.entries(at: dir, directoriesOnly: true) == ["sub"])
        #expect(Syscall.entries(at: "\(dir)/missing").isEmpty)
        let dfd = open(dir, O_RDONLY | O_DIRECTORY)
        defer { close(dfd) }
        #expect(Syscall.entries(of: dfd).sorted() == ["file", "sub"])
        // The caller's descriptor stays open and usable.
        #expect(Syscall.entries(of: dfd).count == 2)
    }

    /// State files are replaced whole through a temporary of this process's own, which never
    /// stays behind: not after a replace, and not when the rename fails (the target is a directory).
    @Test func replaceWritesWholeFilesAndLeavesNoTemporary() throws {
        var template = Array("/tmp/netshape-replace-XXXXXX".utf8CString)
        let dir = try #require(mkdtemp(&template).map { String(cString: $0) })
        defer {
            for name in Syscall.entries(at: dir) { unlink("\(dir)/\(name)") }
            rmdir("\(dir)/busy")
            rmdir(dir)
        }
        let path = "\(dir)/record.json"
        try Files.replace(path, with: "first, and longer than the second")
        try Files.replace(path, with: "second")
        #expect(Files.readString(path) == "second")
        #expect(Syscall.entries(at: dir) == ["record.json"])
        #expect(mkdir("\(dir)/busy", 0o755) == 0)
        #expect {
            try Files.replace("\(dir)/busy", with: "x")
        } throws: { e in
            (e as? KernelError)?.errno == EISDIR && "\(e)".contains("busy")
        }
        #expect(Syscall.entries(at: dir).sorted() == ["busy", "record.json"], "the temporary is removed")
    }

    /// The test process has many threads that never blocked SIGTERM (the concurrency pool): a
    /// SIGTERM sent to the process while `status --watch` holds the signals must arrive as an
    /// event, whichever thread the kernel hands it to, and must not end the process.
    @Test func takenSignalsArriveAsEventsFromAnyThread() throws {
        let term = Terminal()
        try term.takeSignals()
        defer { term.restore() }
        try startThread(name: "test-kill") { _ = kill(getpid(), SIGTERM) }
        var got: Terminal.Event = .timeout
        for _ in 0..<50 {
            got = try term.next(timeoutMilliseconds: 100, readKeys: false)
            if got != .timeout { break }
        }
        #expect(got == .signal(SIGTERM))
        // A second taker is refused while the first holds them.
        #expect(throws: KernelError.self) { try Terminal().takeSignals() }
    }
}
