import Logging
import NetshapeCore
import NetshapeEngine
import NetshapeKernel

/// The pods the CNI plugin shaped on this node, as the daemon sees them: the plugin records each
/// attachment at ADD (and forgets it at DEL) in a `CNIAttachmentStore`; the daemon rebuilds each
/// pod's policy with the plugin's own decoder (`policy`, given by the CLI, which owns CNI decoding)
/// and then treats it like its own policy: converge the pod's tree, classify the pod's processes
/// found in /proc, and put the pod's classes into the exec fast path.
struct CNIAttachments: Sendable {
    let store: any AttachmentRecords
    let policy: @Sendable (CNIAttachment) throws -> Policy
}

/// One attachment's policy and what the last reconcile saw of it.
struct AttachmentState: Sendable {
    var policy: Policy
    var state: PlanResult
}

extension DaemonCore {
    /// Converges every recorded attachment, each under its own owner (the key the plugin's ADD
    /// applied it under), so the daemon never touches another pod's or policy's objects.
    /// A pod whose namespace is gone is left out (its DEL or GC removes the record). The caller
    /// holds the state lock, so an ADD or DEL never runs in between.
    func reconcileAttachments(_ reason: String) -> [AttachmentState] {
        guard let cni else { return [] }
        let (records, unreadable) = cni.store.load()
        var out: [AttachmentState] = []
        var status = unreadable
        for (name, a) in records.sorted(by: { $0.key < $1.key }) {
            do {
                let p = try cni.policy(a)
                let report = try engine.apply(
                    p, policyPath: a.owner, options: ApplyOptions(skipUnreachable: true))
                if let problem = report.skipped.values.first {
                    status[name] = "pod \(a.containerID): \(problem)"
                    continue
                }
                let changes = report.performed.filter { !$0.isMembership }.count
                if changes > 0 { logger.notice("\(reason): made \(changes) change(s) to pod \(a.containerID)") }
                let moved = report.performed.count - changes
                if moved > 0 { logger.info("\(reason): classified \(moved) process(es) of pod \(a.containerID)") }
                if let state = report.state { out.append(AttachmentState(policy: p, state: state)) }
                status[name] = ""
            } catch {
                status[name] = "pod \(a.containerID) (\(a.netns)): \(error)"
            }
        }
        for (name, problem) in status where attachmentStatus[name] != problem {
            if problem.isEmpty {
                logger.notice("following CNI attachment \(name) (pod \(records[name]?.containerID ?? "?"))")
            } else {
                logger.warning("CNI attachment \(name) is not shaped by the daemon: \(problem)")
            }
        }
        for name in attachmentStatus.keys where status[name] == nil {
            logger.notice("CNI attachment \(name) is gone (DEL): no longer followed")
        }
        attachmentStatus = status
        return out
    }

    /// The exec fast path's snapshot over the daemon's policy and every attachment: each pod's
    /// namespace id maps to its own classes; one matcher knows every policy's patterns and users.
    static func snapshot(
        _ state: PlanResult, policy: Policy, attachments: [AttachmentState], netClsRoot: String
    ) -> ClassifierSnapshot {
        var s = snapshot(state, policy: policy, netClsRoot: netClsRoot)
        guard !attachments.isEmpty else { return s }
        var observed = state.observed
        for a in attachments {
            let pod = snapshot(a.state, policy: a.policy, netClsRoot: netClsRoot)
            // A namespace the node policy shapes stays the node policy's.
            s.namespaces.merge(pod.namespaces) { mine, _ in mine }
            s.fields.merge(pod.fields) { mine, _ in mine }
            observed.users.merge(a.state.observed.users) { mine, _ in mine }
            observed.groups.merge(a.state.observed.groups) { mine, _ in mine }
        }
        let all = Policy(
            settings: policy.settings, namespaces: policy.namespaces + attachments.flatMap(\.policy.namespaces),
            source: policy.source)
        s.matcher = Engine.matcher(all, observed)
        return s
    }
}

extension DaemonCore {
    /// Starts following the CNI plugin's attachments from the next reconcile on.
    func follow(_ attachments: CNIAttachments) { cni = attachments }
}
