import FoundationEssentials
import NetshapeKernel

/// The CLI's two streams besides `print`: error lines on stderr, and JSON documents.
enum FileHandleStderr {
    static func write(_ s: String) { Syscall.write(s, to: 2) }
}

func printError(_ message: String, prefixed: Bool = true) {
    FileHandleStderr.write((prefixed ? "netshape: error: " : "") + message + "\n")
}

func encodeJSON<T: Encodable>(_ value: T) throws -> String {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    return String(decoding: try e.encode(value), as: UTF8.self)
}
