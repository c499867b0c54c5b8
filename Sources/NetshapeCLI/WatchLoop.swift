import NetshapeEngine
import NetshapeKernel

/// `status --watch`: samples the kernel every `interval` seconds and redraws in place on a
/// terminal (alternate screen, raw keys, restored on every way out), or prints plain lines when
/// stdout is a pipe or a file.
enum WatchLoop {
    static func run(paths: [String], interval: Double) throws {
        if paths.isEmpty {
            print("netshape has applied no policy on this machine")
            return
        }
        let sessions = try paths.map { try Session(policyPath: $0, lock: false) }
        let title = paths.count == 1 ? paths[0] : "\(paths.count) policies"
        let term = Terminal()
        let tty = Terminal.isTTY(term.output)
        var model = WatchModel(interval: interval)
        let start = Poller.nowMilliseconds()
        // Signals become events in every mode, so SIGTERM or Ctrl-C ends the loop through the
        // restore below instead of killing the process mid-frame.
        try term.takeSignals()
        let keys = tty && Terminal.isTTY(term.input)
        if keys { try term.enterRawMode() }
        if tty { try term.write(WatchView.enter) }
        defer {
            if tty { try? term.write(WatchView.leave) }
            term.restore()
        }
        var next = start
        while true {
            var combined = StatusReport(namespaces: [], interval: interval)
            for s in sessions {
                combined.namespaces += try s.engine.status(s.policy, interval: 0) { _ in }.namespaces
            }
            let now = Poller.nowMilliseconds()
            model.add(combined, at: Double(now - start) / 1000)
            if tty {
                let (cols, rows) = term.size() ?? (100, 40)
                try term.write(WatchView.frame(WatchView.screen(model, title: title, width: cols, height: rows)))
            } else if model.samples > 1 {
                let text = WatchView.lines(model, elapsed: Double(now - start) / 1000).joined(separator: "\n")
                try term.write(text + "\n")
            }
            next += Int64(interval * 1000)
            // Wait for the next sample, answering keys and signals meanwhile.
            while true {
                let left = next - Poller.nowMilliseconds()
                if left <= 0 { break }
                switch try term.next(timeoutMilliseconds: Int32(left), readKeys: keys) {
                case .key(let k) where k == UInt8(ascii: "q") || k == UInt8(ascii: "Q") || k == 3: return
                case .signal: return
                case .inputClosed: if keys { return }
                case .resized:
                    if tty {
                        let (cols, rows) = term.size() ?? (100, 40)
                        try term.write(
                            "\u{1B}[2J"
                                + WatchView.frame(WatchView.screen(model, title: title, width: cols, height: rows)))
                    }
                case .key, .timeout: continue
                }
            }
            // A slow sample must not make the loop run to catch up.
            if next < Poller.nowMilliseconds() { next = Poller.nowMilliseconds() }
        }
    }
}
