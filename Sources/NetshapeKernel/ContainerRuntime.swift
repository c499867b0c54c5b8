internal import CNetshapeShim
import FoundationEssentials
import Glibc
import NetshapeCore

/// One HTTP/1.1 response read off a unix socket.
struct HTTPResponse: Equatable {
    var status: Int
    /// Header names lowercased.
    var headers: [String: String]
    var body: [UInt8]

    /// Parses a whole response (status line, headers, body as Content-Length, chunked, or up to the
    /// end). Throws naming `what` when the bytes are not HTTP.
    static func parse(_ bytes: [UInt8], what: String) throws -> HTTPResponse {
        guard let end = headerEnd(bytes) else {
            throw KernelError(.state, what, reason: "the answer is not an HTTP response (no end of headers)")
        }
        let head = String(decoding: bytes[..<end], as: UTF8.self).split(separator: "\r\n")
        guard let statusLine = head.first, statusLine.hasPrefix("HTTP/1."),
            let code = statusLine.split(separator: " ").dropFirst().first.flatMap({ Int($0) })
        else {
            throw KernelError(.state, what, reason: "the answer is not an HTTP response: \(head.first ?? "")")
        }
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: " \t")
        }
        var body = Array(bytes[(end + 4)...])
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            var d = ChunkedDecoder()
            body = try d.feed(body, what: what)
        } else if let n = headers["content-length"].flatMap({ Int($0) }), n <= body.count {
            body = Array(body[..<n])
        }
        return HTTPResponse(status: code, headers: headers, body: body)
    }

    /// Index of the `\r\n\r\n` that ends the headers.
    static func headerEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4)
        where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 {
            return i
        }
        return nil
    }
}

/// Decodes `Transfer-Encoding: chunked` incrementally: dockerd streams `/events` that way, one
/// chunk per event, for as long as the connection lives.
struct ChunkedDecoder {
    var pending: [UInt8] = []
    /// Bytes still owed by the current chunk (then its CRLF).
    var remaining = 0
    var finished = false

    /// Feeds raw bytes, returns the payload they complete.
    mutating func feed(_ bytes: [UInt8], what: String) throws -> [UInt8] {
        pending += bytes
        var out: [UInt8] = []
        var i = 0
        while !finished {
            if remaining > 0 {
                let take = min(remaining, pending.count - i)
                out += pending[i..<(i + take)]
                i += take
                remaining -= take
                if remaining > 0 { break }
                // The CRLF after the chunk's data.
                guard pending.count - i >= 2 else {
                    remaining = -2
                    break
                }
                i += 2
                continue
            }
            if remaining == -2 {
                guard pending.count - i >= 2 else { break }
                i += 2
                remaining = 0
                continue
            }
            guard let lf = pending[i...].firstIndex(of: 10) else { break }
            let line = String(decoding: pending[i..<lf], as: UTF8.self).trimmingCharacters(in: "\r ")
            let sizeText = line.split(separator: ";").first.map(String.init) ?? ""
            guard let size = Int(sizeText, radix: 16) else {
                throw KernelError(.state, what, reason: "bad chunk size \"\(line)\" in a chunked HTTP body")
            }
            i = lf + 1
            if size == 0 {
                finished = true
                break
            }
            remaining = size
        }
        pending.removeFirst(i)
        return out
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String { String(self).trimmingCharacters(in: set) }
}

/// A minimal HTTP/1.1 client over a unix stream socket (dockerd's API socket): `GET` only, one
/// connection per request (`Connection: close`), so a response ends where the socket does.
struct UnixHTTPClient {
    let socketPath: String
    /// What the socket belongs to, for messages ("Docker").
    let service: String

    /// Connects, with `timeoutSeconds` on every read (0: block, for event streams).
    func connect(timeoutSeconds: Int) throws -> Int32 {
        let fd = try sys("socket(AF_UNIX) for \(socketPath)") {
            socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        if timeoutSeconds > 0 {
            var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let path = Array(socketPath.utf8)
        guard path.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            close(fd)
            throw KernelError(.state, "connect(\(socketPath))", errno: ENAMETOOLONG, reason: "socket path too long")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.enumerated() { raw[i] = b }
            raw[path.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if rc != 0 {
            let e = errno
            close(fd)
            // Not running is the usual case, so it reads as "missing", which the daemon waits out.
            throw KernelError(
                e == ENOENT || e == ECONNREFUSED ? .notFound : .syscall, "connect(\(socketPath))", errno: e,
                reason: "cannot reach \(service) at \(socketPath): \(String(cString: strerror(e))) (is it running?)")
        }
        return fd
    }

    func send(_ fd: Int32, _ target: String) throws {
        let request = Array("GET \(target) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".utf8)
        try Syscall.writeAll(fd, request, what: socketPath)
    }

    /// `GET target`: the whole response.
    func get(_ target: String, timeoutSeconds: Int = 5) throws -> HTTPResponse {
        let fd = try connect(timeoutSeconds: timeoutSeconds)
        defer { close(fd) }
        try send(fd, target)
        let bytes = try Syscall.readToEnd(fd, what: socketPath, limit: Int.max)
        return try HTTPResponse.parse(bytes, what: "GET \(target) on \(socketPath)")
    }

    /// `GET target` on a response that never ends: calls `line` for every newline-terminated line
    /// of the (chunked) body, until `line` returns false, `shouldStop` says so (checked at least
    /// every `pollMilliseconds`) or the server closes.
    func stream(
        _ target: String, pollMilliseconds: Int32 = 250, shouldStop: () -> Bool, line: (String) -> Bool
    ) throws {
        let fd = try connect(timeoutSeconds: 0)
        defer { close(fd) }
        try send(fd, target)
        let what = "GET \(target) on \(socketPath)"
        var head: [UInt8] = []
        var decoder = ChunkedDecoder()
        var chunked = false
        var inBody = false
        var text: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 16384)
        while !shouldStop() {
            var ready = [PollEntry(fd: fd, wantRead: true, wantWrite: false)]
            try Poller.wait(&ready, timeoutMilliseconds: pollMilliseconds)
            if !ready[0].readable && !ready[0].failed { continue }
            let n = try Syscall.readSome(fd, into: &buf, what: what)
            if n == 0 { return }
            var data = Array(buf[..<n])
            if !inBody {
                head += data
                guard let end = HTTPResponse.headerEnd(head) else { continue }
                let r = try HTTPResponse.parse(Array(head[..<(end + 4)]), what: what)
                guard r.status == 200 else {
                    throw KernelError(
                        .state, what,
                        reason:
                            "\(service) answered \(r.status): \(String(decoding: head[(end + 4)...], as: UTF8.self))")
                }
                chunked = r.headers["transfer-encoding"]?.lowercased() == "chunked"
                inBody = true
                data = Array(head[(end + 4)...])
            }
            text += chunked ? try decoder.feed(data, what: what) : data
            while let lf = text.firstIndex(of: 10) {
                let l = String(decoding: text[..<lf], as: UTF8.self)
                text.removeFirst(lf + 1)
                if !l.isEmpty, !line(l) { return }
            }
        }
    }
}

/// Percent-encodes a query value (the JSON of Docker's `filters`).
func percentEncoded(_ s: String) -> String {
    var out = ""
    for b in s.utf8 {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."),
            UInt8(ascii: "~"):
            out.unicodeScalars.append(Unicode.Scalar(b))
        default:
            out += "%" + (b < 16 ? "0" : "") + String(b, radix: 16, uppercase: true)
        }
    }
    return out
}

/// Where a running container's network namespace is right now.
public struct ResolvedContainer: Sendable, Equatable {
    public var runtime: ContainerRuntimeKind
    public var id: String
    public var name: String
    /// The container's first process (its namespace is the container's).
    public var pid: Int32
    /// `container:ID` when the container joined another one's network namespace (`--net=container:X`).
    public var sharesNetnsWith: String?

    /// The namespace file netshape opens: the container's pid's, valid for as long as it runs.
    public var netnsPath: String { "/proc/\(pid)/ns/net" }
}

/// The container runtimes, asked where a container is each time netshape observes: a restart
/// gives the container a new namespace and a new pid (architecture.md, "docker restart").
public struct ContainerRuntimes: Sendable {
    public var dockerSocket: String
    /// The podman executable (looked up in PATH).
    public var podman: String

    public init(
        dockerSocket: String = Environment.value("NETSHAPE_DOCKER_SOCKET") ?? "/var/run/docker.sock",
        podman: String = Environment.value("NETSHAPE_PODMAN") ?? "podman"
    ) {
        self.dockerSocket = dockerSocket
        self.podman = podman
    }

    var docker: UnixHTTPClient { UnixHTTPClient(socketPath: dockerSocket, service: "Docker") }

    /// What `docker inspect` and `podman inspect` say (the fields netshape reads).
    struct Inspect: Decodable {
        struct State: Decodable {
            var Running: Bool?
            var Status: String?
            var Pid: Int32?
        }
        struct HostConfig: Decodable { var NetworkMode: String? }
        var Id: String
        var Name: String?
        var State: State?
        var HostConfig: HostConfig?
    }

    /// Resolves `target` (a `docker:` or `podman:` one) to its running container. Throws `.notFound`
    /// saying why when the runtime is absent, there is no such container or it is not running.
    public func resolve(_ runtime: ContainerRuntimeKind, _ ref: String) throws -> ResolvedContainer {
        let what = "\(runtime.rawValue) inspect \(ref)"
        // A `containers` template's stand-in target (`docker:label=…`) is never a container.
        guard !ref.isEmpty, ref.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_.-".contains($0)) }) else {
            throw KernelError(
                .notFound, what, errno: ENOENT, reason: "\(ref) is a containers selector, not a container name or id")
        }
        let i: Inspect
        switch runtime {
        case .docker:
            let r = try docker.get("/containers/\(percentEncoded(ref))/json")
            if r.status == 404 {
                throw KernelError(.notFound, what, errno: ENOENT, reason: "docker has no container \(ref)")
            }
            guard r.status == 200 else {
                throw KernelError(
                    .state, what, reason: "Docker answered \(r.status): \(String(decoding: r.body, as: UTF8.self))")
            }
            i = try decode(Inspect.self, r.body, what)
        case .podman:
            let (status, out, err) = try runProgram([podman, "inspect", "--type", "container", "--format", "json", ref])
            guard status == 0 else {
                let text = err.isEmpty ? "exit status \(status)" : err.trimmingCharacters(in: "\n ")
                throw KernelError(.notFound, what, errno: ENOENT, reason: "podman has no container \(ref): \(text)")
            }
            guard let first = try decode([Inspect].self, Array(out.utf8), what).first else {
                throw KernelError(.notFound, what, errno: ENOENT, reason: "podman has no container \(ref)")
            }
            i = first
        }
        let name = (i.Name ?? ref).hasPrefix("/") ? String((i.Name ?? ref).dropFirst()) : (i.Name ?? ref)
        guard i.State?.Running == true, let pid = i.State?.Pid, pid > 0 else {
            throw KernelError(
                .notFound, what, errno: ESRCH,
                reason: "\(runtime.rawValue) container \(name) is not running (\(i.State?.Status ?? "no state"))")
        }
        let mode = i.HostConfig?.NetworkMode ?? ""
        return ResolvedContainer(
            runtime: runtime, id: i.Id, name: name, pid: pid, sharesNetnsWith: mode.hasPrefix("container:") ? mode : nil
        )
    }

    /// The running containers that carry every label of `selector`.
    public func list(_ selector: ContainerSelector) throws -> [ContainerInfo] {
        struct DockerEntry: Decodable {
            var Id: String
            var Names: [String]?
            var Labels: [String: String]?
        }
        switch selector.runtime {
        case .docker:
            let filters = "{\"label\":[" + selector.filterTerms.map { jsonString($0) }.joined(separator: ",") + "]}"
            let target = "/containers/json?filters=\(percentEncoded(filters))"
            let r = try docker.get(target)
            guard r.status == 200 else {
                throw KernelError(
                    .state, "GET \(target)",
                    reason: "Docker answered \(r.status): \(String(decoding: r.body, as: UTF8.self))")
            }
            return try decode([DockerEntry].self, r.body, "docker ps").map {
                let n = $0.Names?.first ?? $0.Id
                return ContainerInfo(
                    runtime: .docker, id: $0.Id, name: n.hasPrefix("/") ? String(n.dropFirst()) : n,
                    labels: $0.Labels ?? [:])
            }
        case .podman:
            struct PodmanEntry: Decodable {
                var Id: String
                var Names: [String]?
                var Labels: [String: String]?
            }
            var argv = [podman, "ps", "--format", "json"]
            for t in selector.filterTerms { argv += ["--filter", "label=\(t)"] }
            let (status, out, err) = try runProgram(argv)
            guard status == 0 else {
                throw KernelError(.notFound, argv.joined(separator: " "), reason: "podman ps failed: \(err)")
            }
            return try decode([PodmanEntry].self, Array(out.utf8), "podman ps").map {
                ContainerInfo(runtime: .podman, id: $0.Id, name: $0.Names?.first ?? $0.Id, labels: $0.Labels ?? [:])
            }
        }
    }

    /// Follows Docker's container start, die and destroy events until `shouldStop`; calls `event`
    /// with the action and container id of each. Returns when dockerd closes the stream.
    public func followDockerEvents(shouldStop: () -> Bool, _ event: (String, String) -> Void) throws {
        struct Event: Decodable {
            struct Actor: Decodable { var ID: String? }
            var Action: String?
            var status: String?
            var id: String?
            var Actor: Actor?
        }
        let filters = #"{"type":["container"],"event":["start","die","destroy"]}"#
        try docker.stream("/events?filters=\(percentEncoded(filters))", shouldStop: shouldStop) { line in
            if let e = try? JSONDecoder().decode(Event.self, from: Data(line.utf8)) {
                event(e.Action ?? e.status ?? "?", e.Actor?.ID ?? e.id ?? "?")
            }
            return !shouldStop()
        }
    }

    func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], _ what: String) throws -> T {
        do { return try JSONDecoder().decode(type, from: Data(bytes)) } catch {
            throw KernelError(
                .state, what,
                reason: "unexpected answer (\(error)): \(String(decoding: bytes.prefix(200), as: UTF8.self))")
        }
    }

    func jsonString(_ s: String) -> String {
        var out = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            default:
                if c.value < 0x20 {
                    out +=
                        "\\u" + String(repeating: "0", count: 4 - String(c.value, radix: 16).count)
                        + String(c.value, radix: 16)
                } else {
                    out.unicodeScalars.append(c)
                }
            }
        }
        return out + "\""
    }
}

/// Runs `argv` (looked up in PATH) to completion: its exit status, standard output and error.
/// The one place netshape starts another program and waits for it (Podman has no daemon to ask).
func runProgram(_ argv: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    var outPipe: [Int32] = [-1, -1]
    var errPipe: [Int32] = [-1, -1]
    try sys("pipe for \(argv[0])") { pipe(&outPipe) }
    defer { for fd in outPipe where fd >= 0 { close(fd) } }
    try sys("pipe for \(argv[0])") { pipe(&errPipe) }
    defer { for fd in errPipe where fd >= 0 { close(fd) } }
    // Close-on-exec, so no other program netshape starts inherits them (dup2 clears it on 1 and 2).
    for fd in outPipe + errPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
    posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    var cArgs = argv.map { strdup($0) }
    cArgs.append(nil)
    defer { for p in cArgs { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawnp(&pid, argv[0], &actions, nil, cArgs, environ)
    guard rc == 0 else {
        throw KernelError(
            rc == ENOENT ? .notFound : .syscall, "posix_spawnp(\(argv[0]))", errno: rc,
            reason:
                "cannot run \(argv[0]): \(String(cString: strerror(rc)))\(rc == ENOENT ? " (is it installed?)" : "")")
    }
    close(outPipe[1])
    outPipe[1] = -1
    close(errPipe[1])
    errPipe[1] = -1
    func drain(_ fd: Int32) -> String {
        String(decoding: (try? Syscall.readToEnd(fd, what: "\(argv[0]) output", limit: Int.max)) ?? [], as: UTF8.self)
    }
    // Output first, then errors: podman's error text is a line, far below a pipe's 64 KiB.
    let out = drain(outPipe[0])
    let err = drain(errPipe[0])
    var status: Int32 = 0
    try sys("waitpid(\(argv[0]))") { waitpid(pid, &status, 0) }
    // WIFEXITED / WEXITSTATUS are macros: the same bit layout spelled out.
    let exited = status & 0x7F == 0
    return (exited ? (status >> 8) & 0xFF : 128 + (status & 0x7F), out, err)
}
