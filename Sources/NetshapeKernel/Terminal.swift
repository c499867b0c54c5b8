internal import CNetshapeShim
import Glibc

/// The controlling terminal for `status --watch`: raw mode with the settings it found put back,
/// and termination signals received as events (a self-pipe) so that every way out, `q`, Ctrl-C,
/// SIGTERM, SIGHUP, goes through the same restore.
public final class Terminal {
    public let input: Int32
    public let output: Int32
    private var saved: termios?
    private var signals: Int32 = -1

    public init(input: Int32 = 0, output: Int32 = 1) {
        self.input = input
        self.output = output
    }

    deinit { restore() }

    public static func isTTY(_ fd: Int32) -> Bool { isatty(fd) == 1 }

    /// Columns and rows of `output`, or nil when it is not a terminal.
    public func size() -> (columns: Int, rows: Int)? {
        var ws = winsize()
        guard ioctl(output, UInt(TIOCGWINSZ), &ws) == 0, ws.ws_col > 0, ws.ws_row > 0 else { return nil }
        return (Int(ws.ws_col), Int(ws.ws_row))
    }

    /// Turns off echo and line buffering on `input` and takes SIGINT, SIGTERM, SIGHUP and SIGWINCH
    /// as events. ISIG stays on, so Ctrl-C is a SIGINT and arrives through the signal pipe.
    public func enterRawMode() throws {
        var t = termios()
        try sys("tcgetattr(fd \(input))") { tcgetattr(input, &t) }
        saved = t
        var raw = t
        raw.c_lflag &= ~tcflag_t(ICANON | ECHO)
        // VMIN 0 / VTIME 0: read returns what is there; poll does the waiting.
        withUnsafeMutableBytes(of: &raw.c_cc) { cc in
            cc[Int(VMIN)] = 0
            cc[Int(VTIME)] = 0
        }
        try sys("tcsetattr(fd \(input), raw)") { tcsetattr(input, TCSANOW, &raw) }
        try takeSignals()
    }

    /// Catches the termination signals (in every thread) onto a pipe, so a signal wakes `poll`
    /// instead of killing the process with the terminal left raw.
    public func takeSignals() throws {
        guard signals < 0 else { return }
        signals = try sys("sigaction(INT TERM HUP WINCH)") { netshape_termination_signals_open() }
    }

    /// Puts back the terminal settings and the signal handlers; safe to call more than once.
    public func restore() {
        if var t = saved {
            _ = tcsetattr(input, TCSANOW, &t)
            saved = nil
        }
        if signals >= 0 {
            netshape_termination_signals_close(signals)
            signals = -1
        }
    }

    public enum Event: Equatable {
        case key(UInt8)
        /// SIGINT, SIGTERM or SIGHUP: quit.
        case signal(Int32)
        case resized
        case timeout
        /// The input closed (no more keys can come).
        case inputClosed
    }

    /// Waits up to `timeoutMilliseconds` for a key or a signal.
    public func next(timeoutMilliseconds: Int32, readKeys: Bool = true) throws -> Event {
        var fds: [pollfd] = []
        if readKeys { fds.append(pollfd(fd: input, events: Int16(POLLIN), revents: 0)) }
        if signals >= 0 { fds.append(pollfd(fd: signals, events: Int16(POLLIN), revents: 0)) }
        let r = poll(&fds, nfds_t(fds.count), timeoutMilliseconds)
        if r < 0 {
            let e = errno
            if e == EINTR { return .timeout }
            throw KernelError.syscall("poll(terminal)", e)
        }
        if r == 0 { return .timeout }
        if signals >= 0, let sf = fds.last, sf.fd == signals, sf.revents & Int16(POLLIN) != 0 {
            let sig = try sys("read(signal pipe)") { netshape_termination_signal_read(signals) }
            if sig > 0 { return sig == SIGWINCH ? .resized : .signal(sig) }
        }
        if readKeys, fds[0].revents != 0 {
            var b: UInt8 = 0
            let n = sysResult { read(input, &b, 1) }.value
            if n == 1 { return .key(b) }
            if n == 0 || fds[0].revents & Int16(POLLHUP) != 0 { return .inputClosed }
        }
        return .timeout
    }

    /// Writes all of `text` to `output`.
    public func write(_ text: String) throws {
        try Syscall.writeAll(output, Array(text.utf8), what: "fd \(output)")
    }
}
