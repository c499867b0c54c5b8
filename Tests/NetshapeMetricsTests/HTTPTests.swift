import Foundation
import Glibc
import NetshapeKernel
import NetshapeTestClients
import Synchronization
import Testing

@testable import NetshapeMetrics

func parse(_ text: String, _ limits: HTTP.Limits = HTTP.Limits()) -> HTTP.ParseResult {
    HTTP.parse(Array(text.utf8), limits: limits)
}

func status(_ r: HTTP.ParseResult) -> Int? {
    if case .reject(let s) = r { return s.code }
    return nil
}

@Suite struct HTTPParserTests {
    @Test func getMetrics() throws {
        let text = "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: Prometheus/2.0\r\n\r\nGET / HTTP/1.1\r\n"
        guard case .request(let r, let used) = parse(text) else {
            Issue.record("not parsed: \(parse(text))")
            return
        }
        #expect(r.method == "GET" && r.path == "/metrics" && r.version == "HTTP/1.1" && r.keepAlive)
        #expect(r.header("user-agent") == "Prometheus/2.0")
        // Only the first request's head is consumed; the pipelined one stays in the buffer.
        #expect(used == text.utf8.count - "GET / HTTP/1.1\r\n".utf8.count)
        #expect(HTTP.route(r) == .metrics(head: false))
    }

    @Test func incompleteUntilBlankLine() {
        #expect(parse("GET /metrics HTTP/1.1\r\nHost: a\r\n") == .incomplete)
        #expect(parse("GET /met") == .incomplete)
        #expect(parse("") == .incomplete)
    }

    @Test func bareLFAndLeadingEmptyLines() {
        guard case .request(let r, _) = parse("\r\nGET /metrics HTTP/1.0\nConnection: keep-alive\n\n") else {
            Issue.record("bare LF not accepted")
            return
        }
        #expect(r.version == "HTTP/1.0" && r.keepAlive)
        guard case .request(let r10, _) = parse("GET /metrics HTTP/1.0\r\n\r\n") else { return }
        #expect(!r10.keepAlive)
        guard case .request(let c, _) = parse("GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n") else {
            return
        }
        #expect(!c.keepAlive)
    }

    @Test func malformed() {
        #expect(status(parse("GET /metrics\r\n\r\n")) == 400)
        #expect(status(parse("GET  /metrics HTTP/1.1\r\nHost: a\r\n\r\n")) == 400)
        #expect(status(parse("G(T /metrics HTTP/1.1\r\nHost: a\r\n\r\n")) == 400)
        #expect(status(parse("GET /metrics HTTP/1.1\r\n\r\n")) == 400, "HTTP/1.1 without Host")
        #expect(status(parse("GET /metrics HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n")) == 400)
        #expect(status(parse("GET /metrics HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n")) == 400)
        #expect(status(parse("GET /metrics SPDY/3\r\nHost: a\r\n\r\n")) == 400)
        #expect(status(parse("GET /metrics HTTP/2.0\r\nHost: a\r\n\r\n")) == 505)
        #expect(status(parse("GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n")) == 400)
    }

    @Test func bodiesRefused() {
        #expect(status(parse("POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")) == 413)
        #expect(status(parse("POST /metrics HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")) == 413)
        guard case .request(let r, _) = parse("POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n") else {
            Issue.record("empty POST not parsed")
            return
        }
        #expect(HTTP.route(r) == .status(.methodNotAllowed))
    }

    @Test func routes() {
        func route(_ line: String) -> HTTP.Route? {
            guard case .request(let r, _) = parse(line + "\r\nHost: a\r\n\r\n") else { return nil }
            return HTTP.route(r)
        }
        #expect(route("GET /metrics HTTP/1.1") == .metrics(head: false))
        #expect(route("HEAD /metrics HTTP/1.1") == .metrics(head: true))
        #expect(route("GET / HTTP/1.1") == .index)
        #expect(route("GET /metricsx HTTP/1.1") == .status(.notFound))
        #expect(route("GET /../etc/passwd HTTP/1.1") == .status(.notFound))
        #expect(route("DELETE /metrics HTTP/1.1") == .status(.methodNotAllowed))
        #expect(route("PUT /other HTTP/1.1") == .status(.notFound))
        #expect(route("OPTIONS /metrics HTTP/1.1") == .status(.methodNotAllowed))
    }

    @Test func headLimit() {
        let limits = HTTP.Limits(maxHeadBytes: 256, maxHeaderCount: 4)
        let big = "GET /metrics HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "a", count: 300) + "\r\n\r\n"
        #expect(status(parse(big, limits)) == 431)
        // Reaching the limit without the blank line is refused without waiting for more.
        let open = "GET /metrics HTTP/1.1\r\nX: " + String(repeating: "a", count: 300)
        #expect(status(parse(open, limits)) == 431)
        let justBelow = "GET /metrics HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "a", count: 100) + "\r\n"
        #expect(parse(justBelow, limits) == .incomplete)
        let many = "GET /metrics HTTP/1.1\r\nHost: a\r\n" + (1...5).map { "X\($0): 1\r\n" }.joined() + "\r\n"
        #expect(status(parse(many, limits)) == 431)
    }

    @Test func responses() {
        let r = String(decoding: HTTP.response(.ok, body: Array("abc".utf8), keepAlive: true), as: UTF8.self)
        #expect(r.hasPrefix("HTTP/1.1 200 OK\r\n") && r.contains("Content-Length: 3\r\n"))
        #expect(r.contains("Connection: keep-alive\r\n") && r.hasSuffix("\r\n\r\nabc"))
        let head = String(
            decoding: HTTP.response(.ok, body: Array("abc".utf8), keepAlive: false, head: true), as: UTF8.self)
        #expect(head.contains("Content-Length: 3\r\n") && head.hasSuffix("\r\n\r\n"))
        let e = String(decoding: HTTP.error(.methodNotAllowed), as: UTF8.self)
        #expect(e.hasPrefix("HTTP/1.1 405 ") && e.contains("Allow: GET, HEAD\r\n") && e.contains("Connection: close"))
    }
}

@Suite(.serialized) struct HTTPServerTests {
    final class Renders: Sendable {
        let count = Atomic<Int>(0)
        func load(ordering: AtomicLoadOrdering) -> Int { count.load(ordering: .relaxed) }
        func add(_ n: Int, ordering: AtomicUpdateOrdering) { count.add(n, ordering: .relaxed) }
    }

    func server(_ limits: HTTP.Limits = HTTP.Limits()) throws -> (MetricsHTTPServer, Renders) {
        let renders = Renders()
        let s = try MetricsHTTPServer(address: "127.0.0.1:0", limits: limits) {
            renders.add(1, ordering: .relaxed)
            return Array("netshape_test_total 1\n".utf8)
        }
        try s.start()
        return (s, renders)
    }

    @Test func answersAndKeepsAlive() throws {
        let (s, _) = try server()
        defer { s.shutdown() }
        let c = try LoopbackClient(port: s.port)
        c.send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        let r1 = c.response()
        #expect(r1.hasPrefix("HTTP/1.1 200 OK") && r1.hasSuffix("netshape_test_total 1\n"))
        #expect(r1.contains("Content-Type: text/plain; version=0.0.4"))
        c.send("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        #expect(c.response().hasPrefix("HTTP/1.1 405"))
        c.send("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(c.response().hasPrefix("HTTP/1.1 404"))
        #expect(s.answeredCounts() == [200: 1, 405: 1, 404: 1])
    }

    @Test func slowClientDoesNotStallOthers() throws {
        let limits = HTTP.Limits(readTimeoutMilliseconds: 1500)
        let (s, _) = try server(limits)
        defer { s.shutdown() }
        let slow = try LoopbackClient(port: s.port)
        slow.send("GET /met")
        let t0 = Poller.nowMilliseconds()
        for _ in 0..<5 {
            let c = try LoopbackClient(port: s.port)
            c.send("GET /metrics HTTP/1.0\r\n\r\n")
            #expect(c.response().hasPrefix("HTTP/1.1 200"))
        }
        #expect(Poller.nowMilliseconds() - t0 < 1000, "other scrapes waited for the slow client")
        // One byte at a time still runs into the read deadline, counted from the first byte.
        for b in "rics HTTP/1.1\r\n".utf8 {
            if slow.send([b]) == 0 { break }
            usleep(200_000)
        }
        let answer = slow.response()
        #expect(answer.hasPrefix("HTTP/1.1 408"), "got \(answer.prefix(40))")
        #expect(Poller.nowMilliseconds() - t0 < 4000)
    }

    @Test func hugeHeadersAreRefused() throws {
        let (s, renders) = try server()
        defer { s.shutdown() }
        let c = try LoopbackClient(port: s.port)
        var req = Array("GET /metrics HTTP/1.1\r\nHost: x\r\n".utf8)
        req += Array(repeating: UInt8(ascii: "a"), count: 1 << 20)
        c.send(req)
        // The server answers 431 after its 8 KiB limit and closes; the rest of the megabyte is
        // refused (the send above stops early or the peer resets), not buffered.
        let r = c.response()
        #expect(r.isEmpty || r.hasPrefix("HTTP/1.1 431"))
        #expect(renders.load(ordering: .relaxed) == 0)
        let d = try LoopbackClient(port: s.port)
        d.send("GET /metrics HTTP/1.0\r\n\r\n")
        #expect(d.response().hasPrefix("HTTP/1.1 200"))
        #expect(s.answeredCounts()[431] == 1)
    }

    @Test func connectionLimitEvictsIdleOnes() throws {
        let (s, _) = try server(HTTP.Limits(maxConnections: 4))
        defer { s.shutdown() }
        let idle = try (0..<8).map { _ in try LoopbackClient(port: s.port) }
        usleep(100_000)
        let c = try LoopbackClient(port: s.port)
        c.send("GET /metrics HTTP/1.0\r\n\r\n")
        #expect(c.response().hasPrefix("HTTP/1.1 200"))
        _ = idle
    }

    @Test func badAddress() {
        #expect(throws: KernelError.self) { try MetricsHTTPServer(address: "nowhere:80") { [] } }
        #expect(TCPSocket.parseAddress("127.0.0.1:9477")?.port == 9477)
        #expect(TCPSocket.parseAddress("[::1]:9477")?.host == "::1")
        #expect(TCPSocket.parseAddress("localhost:1")?.host == "127.0.0.1")
        #expect(TCPSocket.parseAddress("127.0.0.1") == nil)
        #expect(TCPSocket.parseAddress("127.0.0.1:70000") == nil)
    }
}
