import NetshapeCore
import NetshapeEngine
import NetshapeKernel
import NetshapePolicy

/// An error that carries its own exit status (the CLI's `CLIError`).
public protocol ExitStatusError: Error {
    var message: String { get }
    var exitCode: Int32 { get }
}

/// How a failure is reported, decided once for both front ends: the CLI prints `message` (and
/// `hint`) and exits `exitStatus`; the CNI plugin turns `kind` into a CNI error code.
public struct Failure: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        /// The policy (or CNI config) is invalid: exit 65, CNI code 7.
        case invalidPolicy
        /// A namespace, device or runtime is not there: exit 1, CNI code 3.
        case notFound
        /// The machine refused, or the engine could not finish: exit 1, CNI code 999.
        case refused
        /// An error with its own status (usage errors are 2).
        case other
    }

    public var kind: Kind
    public var exitStatus: Int32
    public var message: String
    /// Printed after the message by the CLI (what to do about it).
    public var hint: String?
    /// Whether the CLI prefixes `netshape: error: ` (diagnostics in FILE:LINE:COL form are not).
    public var prefixed: Bool

    /// The report of `error`, or nil for an error this mapping does not know (ArgumentParser's
    /// own, whose status and text ArgumentParser decides).
    public init?(_ error: any Error) {
        prefixed = true
        hint = nil
        switch error {
        case let e as PolicyError:
            (kind, exitStatus, message, prefixed) = (.invalidPolicy, 65, e.description, false)
        case let e as any ExitStatusError:
            kind = e.exitCode == 65 ? .invalidPolicy : .other
            (exitStatus, message, prefixed) = (e.exitCode, e.message, e.exitCode != 65)
        case let e as ApplyError: (kind, exitStatus, message) = (.refused, 1, "apply failed: \(e)")
        case let e as ResetError: (kind, exitStatus, message) = (.refused, 1, "reset failed: \(e)")
        case let e as DiffError: (kind, exitStatus, message) = (.refused, 1, e.message)
        case let e as PlanError: (kind, exitStatus, message) = (.refused, 1, e.message)
        case let e as KernelError:
            (kind, exitStatus, message) = (e.code == .notFound ? .notFound : .refused, 1, e.description)
            if (e.errno == KernelErrno.EPERM || e.errno == KernelErrno.EACCES) && !Syscall.isRoot {
                hint =
                    "netshape changes the kernel and cgroupfs: run it as root (it needs CAP_NET_ADMIN and CAP_SYS_ADMIN)"
            }
        default: return nil
        }
    }
}
