import NetshapeEngine

/// What `status --watch` remembers between samples: per class (and per namespace ingress) the
/// last counters and the rates of the last minute. Pure: the loop feeds it reports and times.
struct WatchModel {
    struct Series: Equatable {
        /// Bits per second, oldest first, at most `capacity` samples.
        var rates: [Double] = []
        var lastBytes: UInt64?
    }

    /// Samples kept: one minute at the sampling interval.
    let capacity: Int
    let interval: Double
    private(set) var series: [String: Series] = [:]
    private(set) var report = StatusReport(namespaces: [], interval: 0)
    private(set) var lastTime: Double?
    private(set) var samples = 0

    init(interval: Double) {
        self.interval = interval
        capacity = max(2, Int((60 / interval).rounded(.up)))
    }

    static func classKey(_ ns: String, _ cls: String) -> String { "\(ns)/\(cls)" }
    static func ingressKey(_ ns: String) -> String { "\(ns)//ingress" }

    /// Adds one sample taken at `time` (seconds, any monotonic origin).
    mutating func add(_ r: StatusReport, at time: Double) {
        let elapsed = lastTime.map { time - $0 } ?? 0
        var next: [String: Series] = [:]
        func feed(_ key: String, _ bytes: UInt64) {
            var s = series[key] ?? Series()
            if let last = s.lastBytes, elapsed > 0 {
                // Counters below the last reading: the class was recreated; its rate restarts.
                let delta = bytes >= last ? bytes - last : 0
                s.rates.append(Double(delta) * 8 / elapsed)
                if s.rates.count > capacity { s.rates.removeFirst(s.rates.count - capacity) }
            }
            s.lastBytes = bytes
            next[key] = s
        }
        for ns in r.namespaces where ns.problem == nil {
            for c in ns.classes where c.present { feed(Self.classKey(ns.name, c.name), c.bytes) }
            if let i = ns.ingressShaping, i.applied { feed(Self.ingressKey(ns.name), i.bytes) }
        }
        // Classes that left the policy are forgotten with it.
        series = next
        report = r
        lastTime = time
        samples += 1
    }

    /// The latest rate of `key`, nil before two samples.
    func now(_ key: String) -> Double? { series[key]?.rates.last }
}

/// Draws a `WatchModel` as text: the full-screen view and the plain lines for a pipe.
enum WatchView {
    static let blocks: [Character] = ["▏", "▎", "▍", "▌", "▋", "▊", "▉", "█"]
    static let sparks: [Character] = ["▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"]

    /// A bar `width` cells wide for `value` out of `full`, in eighths of a cell, with `mark` (a
    /// second value, the guaranteed rate) shown as `|` where the bar does not cover it.
    static func bar(_ value: Double, of full: Double, width: Int, mark: Double? = nil) -> String {
        guard width > 0 else { return "" }
        let f = full > 0 ? min(max(value / full, 0), 1) : 0
        let eighths = Int((f * Double(width * 8)).rounded())
        var cells: [Character] = Array(repeating: "·", count: width)
        for i in 0..<width {
            let filled = eighths - i * 8
            if filled >= 8 {
                cells[i] = "█"
            } else if filled > 0 {
                cells[i] = blocks[filled - 1]
            }
        }
        if let m = mark, full > 0, m < full {
            let at = min(width - 1, Int((m / full * Double(width)).rounded(.down)))
            if cells[at] == "·" { cells[at] = "|" }
        }
        return String(cells)
    }

    /// The samples as a sparkline scaled to `full` (the ceiling), so its height reads the same as
    /// the bar. `span` is how many samples the whole width stands for (a minute's worth): wider
    /// than `width`, each column is the mean of its share of them; a history still shorter than
    /// `span` leaves the left side blank, so the time axis does not stretch as it fills.
    static func sparkline(_ rates: [Double], full: Double, width: Int, span: Int = 0) -> String {
        guard width > 0 else { return "" }
        let top = full > 0 ? full : (rates.max() ?? 0)
        func glyph(_ r: Double?) -> Character {
            guard let r, top > 0, r > 0 else { return " " }
            return sparks[min(7, max(0, Int((r / top * 8).rounded(.up)) - 1))]
        }
        guard span > width else {
            let tail = rates.suffix(width)
            return String(repeating: " ", count: width - tail.count) + String(tail.map { glyph($0) })
        }
        let samples = Array(rates.suffix(span))
        let offset = span - samples.count
        var out = ""
        for c in 0..<width {
            let lo = c * span / width - offset
            let hi = (c + 1) * span / width - offset
            let slice = samples[max(0, lo)..<max(0, min(samples.count, hi))]
            out.append(slice.isEmpty ? " " : glyph(slice.reduce(0, +) / Double(slice.count)))
        }
        return out
    }

    /// `12.3mbit`, `850kbit`, `0bit`: the short form of a rate in bits per second.
    static func rate(_ bits: Double) -> String {
        if bits >= 1e9 { return fixed(bits / 1e9) + "gbit" }
        if bits >= 1e6 { return fixed(bits / 1e6) + "mbit" }
        if bits >= 1e3 { return fixed(bits / 1e3) + "kbit" }
        return "\(Int(bits))bit"
    }

    static func fixed(_ v: Double) -> String {
        let tenths = Int((v * 10).rounded())
        return tenths >= 1000 ? "\(tenths / 10)" : "\(tenths / 10).\(tenths % 10)"
    }

    static func pad(_ s: String, _ n: Int, right: Bool = false) -> String {
        let c = s.count
        if c >= n { return String(s.prefix(n)) }
        let fill = String(repeating: " ", count: n - c)
        return right ? fill + s : s + fill
    }

    /// The full-screen view, one string per row, each at most `width` characters; rows past
    /// `height` are cut and the last row says how many were left out.
    static func screen(_ m: WatchModel, title: String, width: Int, height: Int) -> [String] {
        let w = max(width, 40)
        let nameW = 14
        let nowW = 10
        let numW = 7
        let backlogW = 9  // the widest human() gives: "1023.9KiB"
        // What is left after the fixed columns is shared by the bar and the sparkline.
        let fixedW = 2 + nameW + 1 + nowW + 1 + 1 + 21 + 1 + numW + 1 + backlogW + 1 + 5 + 4
        let flex = max(10, w - fixedW)
        let barW = max(5, flex / 2)
        let sparkW = max(5, flex - barW)
        var rows: [String] = []
        let every = m.interval == m.interval.rounded() ? "\(Int(m.interval))s" : "\(m.interval)s"
        rows.append(clip("netshape status --watch  \(title)  every \(every), q or Ctrl-C quits", w))
        rows.append("")
        if m.report.namespaces.isEmpty { rows.append("no namespaces in the policy") }
        for ns in m.report.namespaces {
            if let p = ns.problem {
                rows.append(clip("namespace \(ns.name): \(p)", w))
                rows.append("")
                continue
            }
            var head = "namespace \(ns.name)  dev \(ns.device)  egress \(Render.bits(ns.egress))"
            if let i = ns.ingress { head += "  ingress \(Render.bits(i))" }
            if !ns.applied { head += "  (NOT APPLIED)" }
            rows.append(clip(head, w))
            rows.append(
                clip(
                    "  " + pad("class", nameW) + " " + pad("now", nowW, right: true) + "  " + pad("0 .. ceil", barW)
                        + " " + pad("rate/ceil", 21) + " " + pad("last minute", sparkW) + " "
                        + pad("drops", numW, right: true) + " " + pad("backlog", backlogW, right: true) + " "
                        + pad("procs", 5, right: true), w))
            for c in ns.classes {
                let key = WatchModel.classKey(ns.name, c.name)
                let now = m.now(key)
                let name = c.name + (c.isDefault ? " *" : "")
                guard c.present else {
                    rows.append(clip("  " + pad(name, nameW) + " missing from the kernel", w))
                    continue
                }
                let ceil = Double(c.ceil)
                rows.append(
                    clip(
                        "  " + pad(name, nameW) + " " + pad(now.map(rate) ?? "-", nowW, right: true) + " ["
                            + bar(now ?? 0, of: ceil, width: barW, mark: Double(c.rate)) + "] "
                            + pad(rate(Double(c.rate)) + "/" + rate(ceil), 21) + " "
                            + sparkline(m.series[key]?.rates ?? [], full: ceil, width: sparkW, span: m.capacity) + " "
                            + pad("\(c.drops)", numW, right: true) + " "
                            + pad(Render.human(c.backlog), backlogW, right: true) + " "
                            + pad("\(c.pids.count)", 5, right: true), w))
            }
            if let i = ns.ingressShaping {
                let key = WatchModel.ingressKey(ns.name)
                let now = m.now(key)
                let full = Double(i.rate)
                rows.append(
                    clip(
                        "  " + pad("ingress", nameW) + " " + pad(now.map(rate) ?? "-", nowW, right: true) + " ["
                            + bar(now ?? 0, of: full, width: barW) + "] " + pad(rate(full) + " on \(i.device)", 21)
                            + " " + sparkline(m.series[key]?.rates ?? [], full: full, width: sparkW, span: m.capacity)
                            + " "
                            + pad("\(i.drops)", numW, right: true) + (i.applied ? "" : "  (NOT APPLIED)"), w))
            }
            rows.append("")
        }
        if rows.count > height {
            let cut = rows.count - (height - 1)
            rows = Array(rows.prefix(height - 1)) + [clip("… \(cut) more row(s): enlarge the terminal", w)]
        }
        return rows
    }

    /// One frame for a terminal: cursor home, each row cleared to its end, the rest of the
    /// screen cleared, so the view redraws in place without scrolling or flicker.
    static func frame(_ rows: [String]) -> String {
        "\u{1B}[H" + rows.map { $0 + "\u{1B}[K" }.joined(separator: "\r\n") + "\u{1B}[J"
    }

    /// The plain form for a pipe: one line per class and ingress per sample, no escapes.
    static func lines(_ m: WatchModel, elapsed: Double) -> [String] {
        var out: [String] = []
        let t = "t=\(fixed(elapsed))s"
        for ns in m.report.namespaces {
            if let p = ns.problem {
                out.append("\(t) \(ns.name): \(p)")
                continue
            }
            for c in ns.classes where c.present {
                let now = m.now(WatchModel.classKey(ns.name, c.name)).map(rate) ?? "-"
                out.append(
                    "\(t) \(ns.name)/\(c.name) now=\(now) rate=\(rate(Double(c.rate))) ceil=\(rate(Double(c.ceil))) "
                        + "drops=\(c.drops) backlog=\(c.backlog) procs=\(c.pids.count)")
            }
            if let i = ns.ingressShaping, i.applied {
                let now = m.now(WatchModel.ingressKey(ns.name)).map(rate) ?? "-"
                out.append("\(t) \(ns.name)/ingress now=\(now) rate=\(rate(Double(i.rate))) drops=\(i.drops)")
            }
        }
        return out
    }

    static func clip(_ s: String, _ w: Int) -> String { s.count > w ? String(s.prefix(w)) : s }

    static let enter = "\u{1B}[?1049h\u{1B}[?25l\u{1B}[H\u{1B}[2J"
    static let leave = "\u{1B}[?25h\u{1B}[?1049l"
}
