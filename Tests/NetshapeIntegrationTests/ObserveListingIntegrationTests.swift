import Foundation
import NetshapeCore
import Testing

@testable import NetshapeKernel

/// The observation's class cgroup listing on the real net_cls hierarchy, read by a second thread
/// beside the netlink work (here a namespace that is gone), equals the listing one thread reads.
@Suite(.serialized) struct ObserveListingIntegrationTests {
    @Test func threadedListingEqualsTheOneThreadListing() throws {
        guard getuid() == 0, let h = NetClsHierarchy.find(configured: nil) else {
            print("ObserveListingIntegrationTests: skipped: needs root and a mounted net_cls hierarchy")
            return
        }
        let ns = "coldread\(UInt32.random(in: 0...UInt32.max))"
        let base = URL(fileURLWithPath: h.root).appendingPathComponent("netshape/\(ns)")
        let names = (0..<200).map { "c\($0)" }
        try FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
        defer {
            for n in names { rmdir(base.appendingPathComponent(n).path) }
            rmdir(base.path)
        }
        for (k, n) in names.enumerated() {
            let d = base.appendingPathComponent(n)
            try FileManager.default.createDirectory(at: d, withIntermediateDirectories: false)
            try "\(0x10000 + k)\n".write(
                to: d.appendingPathComponent("net_cls.classid"), atomically: false, encoding: .utf8)
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("coldread-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let kernel = LinuxKernel(settings: Settings(), state: StateStore(directory: dir.path))
        let request = ObservationRequest(
            namespaces: [NamespaceRequest(name: ns, target: .named(ns), device: nil)], processes: false)
        for _ in 0..<5 {
            let observed = try kernel.observe(request)
            #expect(observed.namespaces[ns]?.problem != nil, "the namespace does not exist")
            let alone = h.listNetshape(namespaces: [ns])
            #expect(alone.count == names.count + 2)
            let mine = observed.cgroups.filter { $0.key.hasPrefix("netshape/\(ns)") }
            #expect(mine == alone.filter { $0.key.hasPrefix("netshape/\(ns)") })
            #expect(mine.count == names.count + 1)
        }
    }
}

/// The read-back of a rate edit gets classes one at a time (RTM_GETTCLASS with NLM_F_ECHO): a
/// class there is read as a dump reads it, one gone (or a tree gone) is absent, not an error.
@Suite(.serialized) struct SingleClassGetIntegrationTests {
    @Test func singleGetsReadWhatADumpReadsAndLeaveOutWhatIsGone() throws {
        guard getuid() == 0 else {
            print("SingleClassGetIntegrationTests: skipped: needs root")
            return
        }
        let ns = "crget\(UInt32.random(in: 0...UInt32.max))"
        try run(["/usr/sbin/ip", "netns", "add", ns])
        defer { _ = try? run(["/usr/sbin/ip", "netns", "del", ns]) }
        func ipns(_ args: [String]) throws {
            let r = try run(["/usr/sbin/ip", "netns", "exec", ns] + args)
            #expect(r.status == 0, "\(args): \(r.err)")
        }
        try ipns(["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"])
        try ipns(["ip", "link", "set", "d0", "up"])
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("coldread-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let kernel = LinuxKernel(settings: Settings(), state: StateStore(directory: dir.path))
        func classes(_ ids: Set<TCHandle>?) throws -> [TCHandle] {
            var r = NamespaceRequest(name: ns, target: .named(ns), device: "d0")
            r.classesOnly = true
            r.onlyClasses = ids
            var request = ObservationRequest(namespaces: [r], processes: false)
            request.cgroups = false
            return try kernel.observe(request).namespaces[ns]?.classes.map(\.spec.classid).sorted() ?? []
        }
        let (c10, c20, c99) = (
            TCHandle(major: 1, minor: 0x10), TCHandle(major: 1, minor: 0x20), TCHandle(major: 1, minor: 0x99)
        )
        #expect(try classes([c10]) == [], "no qdisc at all: the class is absent")
        try ipns(["tc", "qdisc", "add", "dev", "d0", "root", "handle", "1:", "htb"])
        try ipns(["tc", "class", "add", "dev", "d0", "parent", "1:", "classid", "1:10", "htb", "rate", "1mbit"])
        try ipns(["tc", "class", "add", "dev", "d0", "parent", "1:", "classid", "1:20", "htb", "rate", "2mbit"])
        #expect(try classes([c10, c99]) == [c10])
        #expect(try classes([c10, c20]) == (try classes(nil)))
        try ipns(["tc", "qdisc", "del", "dev", "d0", "root"])
        try ipns(["tc", "qdisc", "add", "dev", "d0", "root", "handle", "1:", "pfifo"])
        // A classless root qdisc in the tree's place (the get says EINVAL): the class is gone, as
        // a dump of the device reads it.
        let afterReplace = Result { try classes([c10]) }
        #expect((try? afterReplace.get()) == [], "\(String(describing: afterReplace))")
    }
}
