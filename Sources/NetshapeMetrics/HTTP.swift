/// The part of HTTP/1.1 the metrics endpoint speaks, as pure functions over bytes: a request head
/// parser with hard limits, and the responses. No I/O here; `MetricsHTTPServer` does that.
public enum HTTP {
    /// Limits a request must stay within; past them the connection is answered and closed.
    public struct Limits: Sendable, Equatable {
        /// The whole request head (request line and headers), in bytes.
        public var maxHeadBytes: Int
        public var maxHeaderCount: Int
        /// Milliseconds from accept (or from the previous response) to a complete request head.
        public var readTimeoutMilliseconds: Int64
        /// Milliseconds a keep-alive connection may sit idle between requests.
        public var idleTimeoutMilliseconds: Int64
        /// Milliseconds to write a response out; a client that does not read is dropped.
        public var writeTimeoutMilliseconds: Int64
        /// Open connections at once; the oldest idle one makes room for a new one.
        public var maxConnections: Int

        public init(
            maxHeadBytes: Int = 8192, maxHeaderCount: Int = 64, readTimeoutMilliseconds: Int64 = 5000,
            idleTimeoutMilliseconds: Int64 = 30000, writeTimeoutMilliseconds: Int64 = 10000, maxConnections: Int = 32
        ) {
            self.maxHeadBytes = maxHeadBytes
            self.maxHeaderCount = maxHeaderCount
            self.readTimeoutMilliseconds = readTimeoutMilliseconds
            self.idleTimeoutMilliseconds = idleTimeoutMilliseconds
            self.writeTimeoutMilliseconds = writeTimeoutMilliseconds
            self.maxConnections = maxConnections
        }
    }

    public struct Request: Sendable, Equatable {
        public var method: String
        /// The path without the query string.
        public var path: String
        public var version: String
        /// Header names lowercased, in order.
        public var headers: [(String, String)]
        /// The connection stays open after the response.
        public var keepAlive: Bool

        public static func == (a: Request, b: Request) -> Bool {
            a.method == b.method && a.path == b.path && a.version == b.version && a.keepAlive == b.keepAlive
                && a.headers.map(\.0) == b.headers.map(\.0) && a.headers.map(\.1) == b.headers.map(\.1)
        }

        public func header(_ name: String) -> String? {
            let n = name.lowercased()
            return headers.first { $0.0 == n }?.1
        }
    }

    public enum ParseResult: Equatable {
        /// The head is not complete yet; read more.
        case incomplete
        /// A complete request and how many bytes of the buffer it used.
        case request(Request, consumed: Int)
        /// Answer with this status and close.
        case reject(Status)
    }

    public struct Status: Sendable, Equatable {
        public var code: Int
        public var reason: String
        public static let ok = Status(code: 200, reason: "OK")
        public static let badRequest = Status(code: 400, reason: "Bad Request")
        public static let notFound = Status(code: 404, reason: "Not Found")
        public static let methodNotAllowed = Status(code: 405, reason: "Method Not Allowed")
        public static let requestTimeout = Status(code: 408, reason: "Request Timeout")
        public static let payloadTooLarge = Status(code: 413, reason: "Payload Too Large")
        public static let headersTooLarge = Status(code: 431, reason: "Request Header Fields Too Large")
        public static let internalError = Status(code: 500, reason: "Internal Server Error")
        public static let unavailable = Status(code: 503, reason: "Service Unavailable")
        public static let versionNotSupported = Status(code: 505, reason: "HTTP Version Not Supported")
    }

    /// Parses one request head from the start of `buffer`. Bodies are not accepted (no method
    /// this endpoint answers has one): a Content-Length above 0 or chunked encoding is 413.
    public static func parse(_ buffer: [UInt8], limits: Limits) -> ParseResult {
        guard let end = headEnd(buffer, limit: limits.maxHeadBytes) else {
            return buffer.count >= limits.maxHeadBytes ? .reject(.headersTooLarge) : .incomplete
        }
        // Only the bytes of the head are decoded; anything after belongs to the next request.
        let head = buffer[0..<end]
        var lines: [ArraySlice<UInt8>] = []
        var start = head.startIndex
        var i = head.startIndex
        while i < head.endIndex {
            if head[i] == 10 {
                var line = head[start..<i]
                if line.last == 13 { line = line.dropLast() }
                lines.append(line)
                start = i + 1
            }
            i += 1
        }
        // RFC 9112 2.2: a server should ignore at least one empty line before the request line.
        while let f = lines.first, f.isEmpty { lines.removeFirst() }
        guard let requestLine = lines.first else { return .reject(.badRequest) }
        let parts = requestLine.split(separator: 32, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty,
            parts[0].allSatisfy({ isTokenByte($0) }), parts[1].allSatisfy({ $0 > 32 && $0 < 127 })
        else { return .reject(.badRequest) }
        let method = String(decoding: parts[0], as: UTF8.self)
        let target = String(decoding: parts[1], as: UTF8.self)
        let version = String(decoding: parts[2], as: UTF8.self)
        guard version.hasPrefix("HTTP/") else { return .reject(.badRequest) }
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else { return .reject(.versionNotSupported) }
        var headers: [(String, String)] = []
        for line in lines.dropFirst() where !line.isEmpty {
            // Obsolete line folding (RFC 9112 5.2) is refused rather than guessed at.
            guard let colon = line.firstIndex(of: 58), line.first != 32, line.first != 9 else {
                return .reject(.badRequest)
            }
            let name = line[line.startIndex..<colon]
            guard !name.isEmpty, name.allSatisfy({ isTokenByte($0) }) else { return .reject(.badRequest) }
            let value = line[(colon + 1)...].drop { $0 == 32 || $0 == 9 }
            headers.append(
                (
                    String(decoding: name, as: UTF8.self).lowercased(),
                    String(decoding: value, as: UTF8.self).trimmingTrailingSpace()
                ))
            if headers.count > limits.maxHeaderCount { return .reject(.headersTooLarge) }
        }
        var request = Request(method: method, path: target, version: version, headers: headers, keepAlive: false)
        if let q = target.firstIndex(where: { $0 == "?" || $0 == "#" }) { request.path = String(target[..<q]) }
        if version == "HTTP/1.1" && request.header("host") == nil { return .reject(.badRequest) }
        if let te = request.header("transfer-encoding"), !te.isEmpty { return .reject(.payloadTooLarge) }
        if let cl = request.header("content-length") {
            guard let n = Int(cl), n >= 0 else { return .reject(.badRequest) }
            if n > 0 { return .reject(.payloadTooLarge) }
        }
        let connection = request.header("connection")?.lowercased() ?? ""
        request.keepAlive = version == "HTTP/1.1" ? !connection.contains("close") : connection.contains("keep-alive")
        return .request(request, consumed: end)
    }

    /// What the server answers to a parsed request; `body` is the exposition for GET/HEAD /metrics.
    public enum Route: Equatable {
        case metrics(head: Bool)
        case index
        case status(Status)
    }

    public static func route(_ r: Request) -> Route {
        let known = r.path == "/metrics" || r.path == "/"
        guard known else { return .status(.notFound) }
        guard r.method == "GET" || r.method == "HEAD" else { return .status(.methodNotAllowed) }
        return r.path == "/" ? .index : .metrics(head: r.method == "HEAD")
    }

    /// A complete response: status line, headers, and (unless `head`) the body.
    public static func response(
        _ status: Status, contentType: String = "text/plain; charset=utf-8", body: [UInt8], keepAlive: Bool,
        head: Bool = false, allow: String? = nil
    ) -> [UInt8] {
        var h = "HTTP/1.1 \(status.code) \(status.reason)\r\n"
        h += "Content-Type: \(contentType)\r\n"
        h += "Content-Length: \(body.count)\r\n"
        if let a = allow { h += "Allow: \(a)\r\n" }
        h += keepAlive ? "Connection: keep-alive\r\n" : "Connection: close\r\n"
        h += "\r\n"
        var out = Array(h.utf8)
        if !head { out += body }
        return out
    }

    /// A short plain-text error response, which closes the connection.
    public static func error(_ status: Status, keepAlive: Bool = false) -> [UInt8] {
        response(
            status, body: Array("\(status.code) \(status.reason)\n".utf8), keepAlive: keepAlive,
            allow: status == .methodNotAllowed ? "GET, HEAD" : nil)
    }

    /// The length of the head including its blank line, when it ends within `limit` bytes.
    static func headEnd(_ b: [UInt8], limit: Int) -> Int? {
        var i = 0
        while i < min(b.count, limit) {
            if b[i] == 10 {
                // LF LF or LF CR LF ends the head (CRLF CRLF being the usual case).
                if i + 1 < b.count && b[i + 1] == 10 { return i + 2 <= limit ? i + 2 : nil }
                if i + 2 < b.count && b[i + 1] == 13 && b[i + 2] == 10 { return i + 3 <= limit ? i + 3 : nil }
            }
            i += 1
        }
        return nil
    }

    static func isTokenByte(_ c: UInt8) -> Bool {
        switch c {
        case 48...57, 65...90, 97...122: return true
        case 33, 35, 36, 37, 38, 39, 42, 43, 45, 46, 94, 95, 96, 124, 126: return true
        default: return false
        }
    }
}

extension String {
    fileprivate func trimmingTrailingSpace() -> String {
        var s = Substring(self)
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
