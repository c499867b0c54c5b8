import NetshapeKernel
import Synchronization

/// The `/metrics` endpoint: one thread, non-blocking sockets and poll(2), so a client that sends
/// one byte a second, never reads, or floods headers only ever holds its own connection (until
/// its deadline) and the daemon's other threads never wait for it.
public final class MetricsHTTPServer: Sendable {
    public let address: String
    public let limits: HTTP.Limits
    /// Renders the exposition; called on the server thread, once per GET /metrics.
    let render: @Sendable () -> [UInt8]
    let stop = Atomic<Bool>(false)
    let listener: UncheckedSocket
    /// Requests answered, by status code (for tests and the log).
    let answered = Mutex<[Int: Int]>([:])

    final class UncheckedSocket: @unchecked Sendable {
        let socket: TCPSocket
        init(_ s: TCPSocket) { socket = s }
    }

    /// Binds at once, so a bad or busy address fails the daemon's start with the kernel's errno.
    public init(address: String, limits: HTTP.Limits = HTTP.Limits(), render: @escaping @Sendable () -> [UInt8]) throws
    {
        self.address = address
        self.limits = limits
        self.render = render
        listener = UncheckedSocket(try TCPSocket.listen(address))
    }

    public var port: UInt16 { (try? listener.socket.localPort()) ?? 0 }

    public func answeredCounts() -> [Int: Int] { answered.withLock { $0 } }

    /// Serves on a new thread until `shutdown()`. `report` is called after every pass of the loop
    /// (at least every 200 ms): nil when it went well, else why not, so the daemon's watchdog
    /// sees a wedged or failing endpoint thread like any other.
    public func start(report: @escaping @Sendable (_ problem: String?) -> Void = { _ in }) throws {
        try startThread(name: "netshape-metrics") { [self] in
            var conns: [Connection] = []
            while !stop.load(ordering: .relaxed) {
                do {
                    try step(&conns)
                    report(nil)
                } catch {
                    report("\(error)")
                    // A poll failure other than EINTR is not expected; back off rather than spin.
                    var e: [PollEntry] = []
                    try? Poller.wait(&e, timeoutMilliseconds: 100)
                }
            }
            for c in conns { c.socket.close() }
            listener.socket.close()
        }
    }

    public func shutdown() { stop.store(true, ordering: .relaxed) }

    final class Connection {
        enum Phase { case reading, writing }
        let socket: TCPSocket
        var phase = Phase.reading
        var input: [UInt8] = []
        var output: [UInt8] = []
        var written = 0
        var keepAlive = false
        /// When this connection is dropped if nothing completes.
        var deadline: Int64
        let opened: Int64
        init(socket: TCPSocket, now: Int64, deadline: Int64) {
            self.socket = socket
            self.opened = now
            self.deadline = deadline
        }
    }

    func step(_ conns: inout [Connection]) throws {
        var entries = [PollEntry(fd: listener.socket.fd, wantRead: true, wantWrite: false)]
        for c in conns {
            entries.append(PollEntry(fd: c.socket.fd, wantRead: c.phase == .reading, wantWrite: c.phase == .writing))
        }
        var now = Poller.nowMilliseconds()
        // Wake for the nearest deadline, and at least every 200 ms to see `shutdown()`.
        let nearest = conns.map(\.deadline).min().map { max(0, $0 - now) } ?? 200
        try Poller.wait(&entries, timeoutMilliseconds: Int32(min(nearest, 200)))
        now = Poller.nowMilliseconds()
        var keep: [Connection] = []
        for (i, c) in conns.enumerated() {
            let e = entries[i + 1]
            if e.failed && !e.readable {
                c.socket.close()
                continue
            }
            if serve(c, e, now: now) { keep.append(c) } else { c.socket.close() }
        }
        conns = keep
        if entries[0].readable {
            while let s = try listener.socket.accept() {
                if conns.count >= limits.maxConnections {
                    // Make room by dropping the connection that has waited longest for a request;
                    // if every one is mid-response, the newcomer is the one turned away.
                    if let victim = conns.indices.filter({ conns[$0].phase == .reading }).min(by: {
                        conns[$0].opened < conns[$1].opened
                    }) {
                        conns[victim].socket.close()
                        conns.remove(at: victim)
                    } else {
                        _ = try? s.write(HTTP.error(.unavailable), from: 0)
                        s.close()
                        count(503)
                        continue
                    }
                }
                conns.append(Connection(socket: s, now: now, deadline: now + limits.readTimeoutMilliseconds))
            }
        }
    }

    func count(_ code: Int) { answered.withLock { $0[code, default: 0] += 1 } }

    /// Advances one connection; false when it is finished.
    func serve(_ c: Connection, _ e: PollEntry, now: Int64) -> Bool {
        switch c.phase {
        case .reading:
            // The deadline first: a client that trickles bytes stays readable and must still time out.
            if now >= c.deadline {
                // A started but unfinished request is told why; an idle keep-alive is just closed.
                if !c.input.isEmpty {
                    _ = try? c.socket.write(HTTP.error(.requestTimeout), from: 0)
                    count(408)
                }
                return false
            }
            if e.readable {
                let room = limits.maxHeadBytes - c.input.count + 1
                guard let r = try? c.socket.read(into: &c.input, max: max(1, min(room, 4096))) else { return false }
                if r == .closed { return false }
                // The read deadline runs from a request's first byte; idle keep-alive waits are longer.
                if case .bytes = r, c.input.count == r.count { c.deadline = now + limits.readTimeoutMilliseconds }
                return advance(c, now: now)
            }
            return true
        case .writing:
            if e.writable {
                guard let r = try? c.socket.write(c.output, from: c.written) else { return false }
                switch r {
                case .bytes(let n): c.written += n
                case .closed: return false
                case .wouldBlock: break
                }
                if c.written == c.output.count {
                    guard c.keepAlive else { return false }
                    c.phase = .reading
                    c.output = []
                    c.written = 0
                    c.deadline =
                        now + (c.input.isEmpty ? limits.idleTimeoutMilliseconds : limits.readTimeoutMilliseconds)
                    return advance(c, now: now)
                }
            }
            return now < c.deadline
        }
    }

    /// Parses what has been read; on a complete request, builds the response and starts writing.
    func advance(_ c: Connection, now: Int64) -> Bool {
        let result = HTTP.parse(c.input, limits: limits)
        var out: [UInt8]
        var code: Int
        switch result {
        case .incomplete: return true
        case .reject(let status):
            out = HTTP.error(status)
            code = status.code
            c.keepAlive = false
            c.input = []
        case .request(let req, let consumed):
            c.input.removeFirst(consumed)
            c.keepAlive = req.keepAlive
            switch HTTP.route(req) {
            case .metrics(let head):
                out = HTTP.response(
                    .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: render(),
                    keepAlive: c.keepAlive, head: head)
                code = 200
            case .index:
                let body = Array("netshape metrics: GET /metrics\n".utf8)
                out = HTTP.response(.ok, body: body, keepAlive: c.keepAlive, head: req.method == "HEAD")
                code = 200
            case .status(let s):
                out = HTTP.error(s, keepAlive: c.keepAlive)
                code = s.code
            }
        }
        count(code)
        c.output = out
        c.written = 0
        c.phase = .writing
        c.deadline = now + limits.writeTimeoutMilliseconds
        return true
    }
}

extension TCPSocket.IO {
    fileprivate var count: Int {
        if case .bytes(let n) = self { return n }
        return 0
    }
}
