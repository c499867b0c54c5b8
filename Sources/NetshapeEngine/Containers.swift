import NetshapeCore

extension Engine {
    /// `policy` with each `containers` entry expanded into one namespace per running container the
    /// kernel port lists for its selector (asked now: containers come and go between two calls).
    /// Instances whose container is gone are then entries the policy no longer has, which `plan`
    /// retires like any other. When a selector's runtime cannot be asked (dockerd down or
    /// restarting), the instances recorded for that entry are kept as they are, so an absent runtime
    /// neither blocks the rest of the policy nor unshapes its containers: they are observed as
    /// unreachable, and the daemon waits for them. A policy without such entries comes back as it is,
    /// without asking any runtime.
    public func expandingContainers(_ policy: Policy) throws -> Policy {
        let selectors = policy.containerSelectors
        guard !selectors.isEmpty else { return policy }
        var running: [ContainerSelector: [ContainerInfo]] = [:]
        var unlisted = Set<ContainerSelector>()
        for s in selectors {
            do { running[s] = try kernel.containers(matching: s) } catch {
                logger.warning("cannot list the containers of \(s): \(error); keeping their instances as they are")
                unlisted.insert(s)
            }
        }
        var expanded = policy.expandingContainers(running)
        guard !unlisted.isEmpty else { return expanded }
        let kept = policy.goneInstances(expanded, record: try kernel.loadOwnership(), policyPath: nil).filter {
            policy.containerEntry(ofInstance: $0.name)?.entry.containers.map(unlisted.contains) == true
        }
        expanded.namespaces += kept
        return expanded
    }
}
