import NetshapeCore
import NetshapeDaemon
import NetshapeFailure
import NetshapeKernel
import NetshapePolicy

/// A failure the CLI reports with its own exit status.
public struct CLIError: ExitStatusError, CustomStringConvertible {
    public var message: String
    public var exitCode: Int32
    public init(_ message: String, exitCode: Int32 = 1) {
        self.message = message
        self.exitCode = exitCode
    }
    public var description: String { message }
}

/// The CLI's side of `PolicySource` (the one loader): the file-safety refusal is a machine error
/// (exit 1), an invalid policy exit 65.
enum PolicyLoader {
    static func load(_ path: String, trusted: Bool) throws -> (Policy, String) {
        do {
            return try PolicySource.load(path, trusted: trusted)
        } catch let e as PolicyFileError {
            throw CLIError(e.message)
        }
    }

    static func absolutePath(_ path: String) -> String { PolicyFile.absolutePath(path) }
}
