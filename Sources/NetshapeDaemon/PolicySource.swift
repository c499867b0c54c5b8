import NetshapeCore
import NetshapeKernel
import NetshapePolicy

/// The one way a policy file becomes a `Policy`, for every entry point (CLI commands, daemon start,
/// SIGHUP reload): `PolicyFile`'s safety rule, then `PolicyParser`. The same file gets the same
/// answer and the same message everywhere.
public enum PolicySource {
    /// Reads and validates `path`. With `trusted` (every command that changes the machine, and the
    /// daemon), refuses a file another user could have written. Throws `PolicyFileError` or
    /// `PolicyError`. Returns the policy and the file's absolute path.
    public static func load(_ path: String, trusted: Bool) throws -> (Policy, String) {
        let (bytes, absolute) = try PolicyFile.read(path, trusted: trusted)
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw PolicyError(diagnostics: [
                PolicyDiagnostic(
                    file: path, position: SourcePosition(line: 1, column: 1), key: "",
                    message: "the policy is not valid UTF-8")
            ])
        }
        return (try PolicyParser.parse(text, file: path), absolute)
    }
}
