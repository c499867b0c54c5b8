import NetshapeCore
import NetshapeEngine
import NetshapeTestSupport
import Testing

/// Classids of classes matched by cgroup v2 path, which are read back from the classifier's map.
@Suite struct Cgroup2ClassidTests {
    static let path = "/etc/netshape/paths.toml"

    func policy(_ classes: [(name: String, cgroup: String?)], default d: String) -> String {
        var s = "version = 1\n[[namespace]]\nname = \"web\"\ndevice = \"eth0\"\negress = \"100mbit\"\n"
        s += "default = \"\(d)\"\n"
        for c in classes {
            s += "[[namespace.class]]\nname = \"\(c.name)\"\nrate = \"5mbit\"\n"
            if let g = c.cgroup {
                s += g.hasPrefix("comm:") ? "match.comm = [\"\(g.dropFirst(5))\"]\n" : "match.cgroup = [\"\(g)\"]\n"
            }
        }
        return s
    }

    @Test func aPathAnEarlierClassTakesDoesNotHandItsOldClassidToALaterOne() throws {
        let k = machine(.stock)
        k.makeCgroup2("app")
        let engine = Engine(kernel: k)
        // "chat" holds /app; then "d" (the old default, minor 2 in its net_cls cgroup: a comm class
        // beside it gives the namespace net_cls) takes /app, "x1" names it after d, and chat becomes
        // the default. The map still says /app -> chat's classid when x1 is planned.
        let before = policy([("c", "comm:nginx"), ("chat", "app"), ("d", nil)], default: "d")
        _ = try engine.apply(try load(before), policyPath: Self.path)
        let after = policy([("c", "comm:nginx"), ("d", "app"), ("x1", "app/"), ("chat", nil)], default: "chat")
        let r = try engine.apply(try load(after), policyPath: Self.path)
        #expect(r.remaining.isEmpty)
        let again = try engine.plan(try load(after), policyPath: Self.path)
        #expect(again.operations.isEmpty, "a second apply renumbers a class: \(again.operations.map(\.command))")
    }
}
